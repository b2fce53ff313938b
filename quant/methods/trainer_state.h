// Checkpoint plumbing shared by the generator-based methods: a generator, its optimizer, the student's
// optimizer, every activation observer, and the number of finished epochs, under one prefix.
#pragma once
#include <string>

#include "engine/checkpoint.h"
#include "engine/optim.h"
#include "models/generator.h"
#include "quant/student.h"

namespace zsq::quant {

struct TrainerParts {
  models::Generator& generator;
  Optimizer& generator_optim;
  Optimizer& student_optim;
  Student& student;
};

void save_trainer_state(Checkpoint& ckpt, const std::string& method, std::int64_t epochs_done,
                        const TrainerParts& parts);
// Returns the number of finished epochs; errors name the file and what is missing.
std::int64_t load_trainer_state(const Checkpoint& ckpt, const std::string& method, const TrainerParts& parts);

}  // namespace zsq::quant
