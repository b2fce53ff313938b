#include <doctest/doctest.h>

#include "ops/layout.h"
#include "ops/reduce.h"
#include "tests/testing.h"

using namespace zsq;
using namespace zsq::testing;

TEST_CASE("normalize_channels matches the reference and finite differences in both formats") {
  Rng rng(1);
  for (const Shape& s : {Shape{2, 3, 4, 5}, Shape{1, 16, 3, 3}, Shape{3, 1, 2, 2}})
    for (auto fmt : {MemoryFormat::contiguous, MemoryFormat::channels_last}) {
      CAPTURE(shape_str(s));
      Tensor x = random_input(s, rng, fmt);
      check_close(ops::normalize_channels(x), ops::ref::normalize_channels(x, 1e-12f), 1e-5, 1e-6, "forward");
      check_gradients([](const std::vector<Tensor>& t) { return ops::normalize_channels(t[0]); }, {x});
    }
  // A zero vector stays finite.
  Tensor z = Tensor::zeros({1, 4, 1, 1});
  z.set_requires_grad(true);
  Tensor y = ops::normalize_channels(z);
  for (float v : y.to_vector()) CHECK(v == 0.0f);
  y.backward(Tensor::full({1, 4, 1, 1}, 1.0f));
  for (float v : z.grad().to_vector()) CHECK(v == 0.0f);  // no 1/eps blow-up at zero vectors
}

TEST_CASE("positions_as_rows lays out each position's channels as a row; gradient maps back") {
  Rng rng(2);
  Tensor x = random_input({2, 3, 2, 2}, rng);  // contiguous: one copy
  Tensor rows = ops::positions_as_rows(x);
  CHECK(rows.shape() == Shape{2, 4, 3});
  auto xv = x.to_vector(), rv = rows.to_vector();
  CHECK(rv[(1 * 4 + 2) * 3 + 1] == xv[((1 * 3 + 1) * 2 + 1) * 2 + 0]);  // b=1, position (1, 0), channel 1
  check_gradients([](const std::vector<Tensor>& t) { return ops::positions_as_rows(t[0]); }, {x});
  Tensor cl = random_input({2, 3, 2, 2}, rng, MemoryFormat::channels_last);
  CHECK(ops::positions_as_rows(cl).raw_data() == cl.raw_data());  // zero copy
  check_gradients([](const std::vector<Tensor>& t) { return ops::positions_as_rows(t[0]); }, {cl});
}
