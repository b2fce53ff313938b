// Int8Conv2d (oneDNN int8 primitive) against the naive reference loop, over a table of shapes and
// every epilogue: u8/f32 output, clip, sum of a u8 residual, add of an f32 residual, source zero point.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "engine/check.h"
#include "ops/conv2d_int8.h"

using namespace zsq;
using ops::Int8ConvEpilogue;
using ops::Int8ConvShape;
using ops::Int8Residual;

namespace {

struct Case {
  Int8ConvShape shape;
  Int8ConvEpilogue epilogue;
  std::int64_t batch;
  std::int32_t zero_point;
  int weight_max;  // 127 for 8-bit weights, 7 for 4-bit values held in s8
};

void run_case(const Case& c) {
  std::mt19937 gen(7);
  const auto& s = c.shape;
  const auto in_n = c.batch * s.height * s.width * s.in_channels;
  const auto out_n = c.batch * s.out_height() * s.out_width() * s.out_channels;
  std::vector<std::uint8_t> src(static_cast<std::size_t>(in_n));
  std::vector<std::int8_t> weight(static_cast<std::size_t>(s.weight_numel()));
  std::vector<std::int32_t> bias(static_cast<std::size_t>(s.out_channels));
  std::vector<float> scale(static_cast<std::size_t>(s.out_channels)),
      residual_f32(static_cast<std::size_t>(out_n));
  std::uniform_int_distribution<int> u8(0, 255), wq(-c.weight_max, c.weight_max), b(-5000, 5000);
  std::uniform_real_distribution<float> sc(0.0005f, 0.004f), rf(-20.0f, 20.0f);
  for (auto& v : src) v = static_cast<std::uint8_t>(u8(gen));
  for (auto& v : weight) v = static_cast<std::int8_t>(wq(gen));
  for (auto& v : bias) v = b(gen);
  for (auto& v : scale) v = sc(gen);
  for (auto& v : residual_f32) v = rf(gen);
  const std::size_t elem = c.epilogue.u8_output ? 1 : 4;
  std::vector<std::uint8_t> got(static_cast<std::size_t>(out_n) * elem), want(got.size());
  if (c.epilogue.residual == Int8Residual::sum_u8)
    for (std::size_t i = 0; i < got.size(); ++i) got[i] = want[i] = static_cast<std::uint8_t>(u8(gen));
  ops::Int8Conv2d conv(s, weight, bias, scale, c.epilogue);
  conv.forward(c.batch, src.data(), got.data(), residual_f32.data(), c.zero_point);
  ops::ref::conv2d_int8(s, c.epilogue, c.batch, src.data(), weight.data(), bias.data(), scale.data(),
                        want.data(), residual_f32.data(), c.zero_point);
  INFO("shape " << s.in_channels << "->" << s.out_channels << " k" << s.kernel << " s" << s.stride << " "
                << s.height << "x" << s.width << " impl " << conv.implementation(c.batch));
  std::int64_t off_by_one = 0, worse = 0;
  if (c.epilogue.u8_output) {
    for (std::size_t i = 0; i < got.size(); ++i) {
      const int d = std::abs(int(got[i]) - int(want[i]));
      off_by_one += d == 1;
      worse += d > 1;
    }
    CHECK(worse == 0);
    // Rounding ties may land differently when oneDNN fuses a multiply-add; anything more is a bug.
    CHECK(off_by_one <= out_n / 1000 + 1);
  } else {
    const auto* g = reinterpret_cast<const float*>(got.data());
    const auto* w = reinterpret_cast<const float*>(want.data());
    for (std::int64_t i = 0; i < out_n; ++i) worse += std::abs(g[i] - w[i]) > 1e-4f * (1.0f + std::abs(w[i]));
    CHECK(worse == 0);
  }
}

}  // namespace

TEST_CASE("int8 conv matches the reference loop for every epilogue") {
  const Int8ConvShape k3{16, 16, 3, 1, 1, 10, 10};
  const Int8ConvShape k3s2{16, 32, 3, 2, 1, 9, 9};
  const Int8ConvShape k1s2{16, 32, 1, 2, 0, 8, 8};
  const Int8ConvShape first{1, 16, 3, 1, 1, 12, 12};
  Int8ConvEpilogue relu_u8;
  relu_u8.clip_hi = 255.0f;
  Int8ConvEpilogue four_bit;
  four_bit.clip_hi = 15.0f;
  Int8ConvEpilogue clip_from_3 = four_bit;
  clip_from_3.clip_lo = 3.0f;
  clip_from_3.clip_hi = 18.0f;
  Int8ConvEpilogue sum = relu_u8;
  sum.residual = Int8Residual::sum_u8;
  sum.residual_scale = 0.7f;
  Int8ConvEpilogue add = four_bit;
  add.residual = Int8Residual::add_f32;
  Int8ConvEpilogue f32_out;
  f32_out.u8_output = false;
  Int8ConvEpilogue zp = relu_u8;
  zp.src_zero_point = true;

  for (const Case& c : {Case{k3, relu_u8, 2, 0, 127}, Case{k3, four_bit, 3, 0, 7},
                        Case{k3, clip_from_3, 1, 0, 7}, Case{k3, sum, 2, 0, 127}, Case{k3s2, add, 2, 0, 7},
                        Case{k3s2, relu_u8, 1, 0, 127}, Case{k1s2, f32_out, 2, 0, 127},
                        Case{k1s2, f32_out, 5, 0, 7}, Case{first, zp, 2, 73, 127}, Case{k3, zp, 1, 128, 127}})
    run_case(c);
}

TEST_CASE("int8 conv rejects inconsistent arguments with clear errors") {
  const Int8ConvShape s{4, 8, 3, 1, 1, 6, 6};
  CHECK_THROWS_WITH_AS(ops::Int8Conv2d(s, std::vector<std::int8_t>(10), std::vector<std::int32_t>(8),
                                       std::vector<float>(8, 1.0f), {}),
                       doctest::Contains("weights given"), Error);
  CHECK_THROWS_WITH_AS(ops::Int8Conv2d(s, std::vector<std::int8_t>(288), std::vector<std::int32_t>(7),
                                       std::vector<float>(8, 1.0f), {}),
                       doctest::Contains("one entry per output channel"), Error);
  Int8ConvEpilogue bad;
  bad.clip_hi = 300.0f;
  CHECK_THROWS_WITH_AS(ops::Int8Conv2d(s, std::vector<std::int8_t>(288), std::vector<std::int32_t>(8),
                                       std::vector<float>(8, 1.0f), bad),
                       doctest::Contains("clip range"), Error);
  ops::Int8Conv2d ok(s, std::vector<std::int8_t>(288), std::vector<std::int32_t>(8),
                     std::vector<float>(8, 1.0f), {});
  std::vector<std::uint8_t> x(4 * 36), y(8 * 36);
  CHECK_THROWS_WITH_AS(ok.forward(1, x.data(), y.data(), nullptr, 5), doctest::Contains("zero point"), Error);
}
