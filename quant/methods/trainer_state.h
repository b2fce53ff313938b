// Checkpoint plumbing shared by the generator-based methods: a generator, its optimizer, the student's
// optimizer, every activation observer, the number of finished epochs and the per-epoch test accuracies
// of a research run, under one prefix.
#pragma once
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/optim.h"
#include "models/generator.h"
#include "quant/student.h"

namespace zsq::quant {

struct EpochAccuracy {
  std::int64_t epoch = 0;  // 1-based: the accuracy after this many finished epochs
  double accuracy = 0.0;   // fraction in [0, 1]
};

struct TrainerParts {
  models::Generator& generator;
  Optimizer& generator_optim;
  Optimizer& student_optim;
  Student& student;
  Optimizer* range_optim = nullptr;  // the learned activation ranges' optimizer (act_range=learned)
};

void save_trainer_state(Checkpoint& ckpt, const std::string& method, std::int64_t epochs_done,
                        const std::vector<EpochAccuracy>& test_accuracy, const TrainerParts& parts);
// Returns the number of finished epochs; errors name the file and what is missing.
std::int64_t load_trainer_state(const Checkpoint& ckpt, const std::string& method,
                                std::vector<EpochAccuracy>& test_accuracy, const TrainerParts& parts);

}  // namespace zsq::quant
