// IDX reading (gzip and raw, every malformed-file error), Fashion-MNIST loading and preprocessing,
// crop/flip geometry and the loader's determinism. Files are generated into a temp dir; the real
// dataset is only read when Debian's dataset-fashion-mnist is installed.
#include <doctest/doctest.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "engine/check.h"
#include "tools/datasets/fashion_mnist.h"
#include "tools/datasets/idx.h"

namespace fs = std::filesystem;
using zsq::BatchLoader;
using zsq::FashionMnist;
using zsq::Tensor;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("zsq_test_datasets_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::vector<std::uint8_t> idx_bytes(std::uint32_t magic, const std::vector<std::uint32_t>& dims,
                                    const std::vector<std::uint8_t>& body) {
  std::vector<std::uint8_t> out;
  auto put = [&](std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
  };
  put(magic);
  for (auto d : dims) put(d);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

void write_file(const std::string& path, const std::vector<std::uint8_t>& bytes, bool gz) {
  if (gz) {
    gzFile f = gzopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    if (!bytes.empty()) REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) > 0);
    REQUIRE(gzclose(f) == Z_OK);
  } else {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}

// Pseudo-random bytes so the gzip stream is not tiny and truncating it cuts real deflate data.
std::vector<std::uint8_t> noise(std::size_t n, std::uint32_t seed = 1) {
  std::vector<std::uint8_t> v(n);
  for (auto& b : v) {
    seed = seed * 1664525u + 1013904223u;
    b = static_cast<std::uint8_t>(seed >> 24);
  }
  return v;
}

// Runs f, requires a zsq::Error, and returns its message.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const zsq::Error& e) {
    return e.what();
  }
  FAIL("expected zsq::Error");
  return {};
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A dataset whose image i is filled with value (i % 200) + 1 and labelled i % 10.
FashionMnist synthetic(std::int64_t n) {
  FashionMnist d;
  d.images.resize(static_cast<std::size_t>(n) * 28 * 28);
  d.labels.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    std::fill(d.images.begin() + i * 784, d.images.begin() + (i + 1) * 784,
              static_cast<std::uint8_t>(i % 200 + 1));
    d.labels[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i % 10);
  }
  return d;
}

std::vector<std::int32_t> epoch_labels_and_order(BatchLoader& loader, std::vector<float>* firsts = nullptr) {
  std::vector<std::int32_t> seen;
  Tensor x, y;
  while (loader.next(x, y)) {
    for (std::int64_t i = 0; i < y.numel(); ++i) {
      seen.push_back(y.data<std::int32_t>()[i]);
      if (firsts != nullptr) firsts->push_back(x.f32()[i * 1024 + 16 * 32 + 16]);
    }
  }
  return seen;
}

}  // namespace

TEST_CASE("idx: round trip, gzip and raw") {
  TempDir dir;
  const auto body = noise(5 * 3 * 4);
  for (bool gz : {true, false}) {
    const std::string path = dir / (gz ? "a-idx3-ubyte.gz" : "a-idx3-ubyte");
    write_file(path, idx_bytes(0x803, {5, 3, 4}, body), gz);
    const zsq::IdxArray a = zsq::read_idx(path, 3);
    CHECK(a.dims == std::vector<std::int64_t>{5, 3, 4});
    CHECK(a.numel() == 60);
    CHECK(a.data == body);
  }
  const std::string labels = dir / "l-idx1-ubyte.gz";
  write_file(labels, idx_bytes(0x801, {7}, {0, 1, 2, 3, 9, 8, 7}), true);
  CHECK(zsq::read_idx(labels, 1).data == std::vector<std::uint8_t>{0, 1, 2, 3, 9, 8, 7});
}

TEST_CASE("idx: malformed files throw errors naming the file") {
  TempDir dir;
  for (bool gz : {true, false}) {
    CAPTURE(gz);
    const std::string ext = gz ? ".gz" : "";
    SUBCASE("missing file") {
      const std::string p = dir / ("missing-idx3-ubyte" + ext);
      const auto msg = error_of([&] { zsq::read_idx(p, 3); });
      CHECK(contains(msg, p));
      CHECK(contains(msg, "No such file"));
    }
    SUBCASE("truncated header") {
      const std::string p = dir / ("short-header" + ext);
      auto bytes = idx_bytes(0x803, {2, 28, 28}, {});
      bytes.resize(10);  // magic plus half the dimensions
      write_file(p, bytes, gz);
      const auto msg = error_of([&] { zsq::read_idx(p, 3); });
      CHECK(contains(msg, p));
      CHECK(contains(msg, "truncated header"));
      write_file(p, {0, 0}, gz);  // not even the magic
      CHECK(contains(error_of([&] { zsq::read_idx(p, 3); }), "truncated header"));
    }
    SUBCASE("truncated body") {
      const std::string p = dir / ("short-body" + ext);
      write_file(p, idx_bytes(0x803, {3, 28, 28}, noise(1000)), gz);
      const auto msg = error_of([&] { zsq::read_idx(p, 3); });
      CHECK(contains(msg, p + ": truncated: header says 3x28x28 = 2352 bytes, file has 1000"));
    }
    SUBCASE("bad magic") {
      const std::string p = dir / ("bad-magic" + ext);
      write_file(p, idx_bytes(0x801, {4}, {1, 2, 3, 4}), gz);  // a label file read as images
      const auto msg = error_of([&] { zsq::read_idx(p, 3); });
      CHECK(contains(msg, p));
      CHECK(contains(msg, "bad magic 0x00000801, expected 0x00000803"));
      write_file(p, idx_bytes(0x0d01, {4}, noise(16)), gz);  // float IDX
      CHECK(contains(error_of([&] { zsq::read_idx(p, 1); }), "bad magic"));
    }
    SUBCASE("trailing garbage") {
      const std::string p = dir / ("trailing" + ext);
      auto bytes = idx_bytes(0x801, {4}, {1, 2, 3, 4});
      bytes.push_back(42);
      bytes.push_back(43);
      write_file(p, bytes, gz);
      const auto msg = error_of([&] { zsq::read_idx(p, 1); });
      CHECK(contains(msg, p));
      CHECK(contains(msg, "2 bytes of trailing data"));
    }
  }
  SUBCASE("truncated gzip stream") {
    const std::string p = dir / "cut-idx3-ubyte.gz";
    write_file(p, idx_bytes(0x803, {10, 28, 28}, noise(7840)), true);
    const auto full = fs::file_size(p);
    REQUIRE(full > 4000);  // incompressible body
    // Cut mid-deflate and also just before the end (inside the CRC/length trailer).
    for (auto keep : {full / 2, full - 3}) {
      CAPTURE(keep);
      write_file(p, idx_bytes(0x803, {10, 28, 28}, noise(7840)), true);
      fs::resize_file(p, keep);
      const auto msg = error_of([&] { zsq::read_idx(p, 3); });
      CHECK(contains(msg, p));
      CHECK(contains(msg, "gzip"));
    }
  }
}

TEST_CASE("fashion-mnist: loading synthetic files and their errors") {
  TempDir dir;
  const auto pixels = noise(3 * 784);
  write_file(dir / "t10k-images-idx3-ubyte.gz", idx_bytes(0x803, {3, 28, 28}, pixels), true);
  write_file(dir / "t10k-labels-idx1-ubyte.gz", idx_bytes(0x801, {3}, {9, 0, 4}), true);

  const FashionMnist test = zsq::load_fashion_mnist(dir.path.string(), zsq::Split::test);
  CHECK(test.size() == 3);
  CHECK(test.images == pixels);
  CHECK(test.labels == std::vector<std::uint8_t>{9, 0, 4});
  CHECK(test.split == zsq::Split::test);

  SUBCASE("count mismatch names both files") {
    write_file(dir / "t10k-labels-idx1-ubyte.gz", idx_bytes(0x801, {4}, {1, 2, 3, 4}), true);
    const auto msg = error_of([&] { zsq::load_fashion_mnist(dir.path.string(), zsq::Split::test); });
    CHECK(contains(msg, "t10k-images-idx3-ubyte.gz holds 3 images"));
    CHECK(contains(msg, "t10k-labels-idx1-ubyte.gz holds 4 labels"));
  }
  SUBCASE("label out of range") {
    write_file(dir / "t10k-labels-idx1-ubyte.gz", idx_bytes(0x801, {3}, {1, 10, 3}), true);
    const auto msg = error_of([&] { zsq::load_fashion_mnist(dir.path.string(), zsq::Split::test); });
    CHECK(contains(msg, "t10k-labels-idx1-ubyte.gz: label 10 at index 1"));
  }
  SUBCASE("missing split file") {
    const auto msg = error_of([&] { zsq::load_fashion_mnist(dir.path.string(), zsq::Split::train); });
    CHECK(contains(msg, "train-images-idx3-ubyte.gz"));
  }
  SUBCASE("raw files are used when no .gz exists") {
    write_file(dir / "train-images-idx3-ubyte", idx_bytes(0x803, {1, 28, 28}, noise(784, 5)), false);
    write_file(dir / "train-labels-idx1-ubyte", idx_bytes(0x801, {1}, {7}), false);
    CHECK(zsq::load_fashion_mnist(dir.path.string(), zsq::Split::train).labels ==
          std::vector<std::uint8_t>{7});
  }
  SUBCASE("missing directory suggests the package") {
    const std::string missing = dir / "nope";
    const auto msg = error_of([&] { zsq::load_fashion_mnist(missing); });
    CHECK(contains(msg, missing));
    CHECK(contains(msg, "apt-get install dataset-fashion-mnist"));
  }
}

TEST_CASE("fashion-mnist: preprocessing values and padding") {
  const float black = (0.0f - 0.2860f) / 0.3530f;
  const float white = (1.0f - 0.2860f) / 0.3530f;
  CHECK(zsq::kFashionBlack == black);
  CHECK(zsq::fashion_normalize(0) == black);
  CHECK(zsq::fashion_normalize(255) == white);
  CHECK(zsq::fashion_normalize(51) == (51.0f / 255.0f - 0.2860f) / 0.3530f);

  std::vector<std::uint8_t> src(784, 255);
  std::vector<float> out(1024);
  zsq::fashion_preprocess(src.data(), out.data());
  for (int y = 0; y < 32; ++y) {
    for (int x = 0; x < 32; ++x) {
      const bool inside = y >= 2 && y < 30 && x >= 2 && x < 30;
      CHECK(out[y * 32 + x] == (inside ? white : black));
    }
  }
  CHECK_THROWS_AS(zsq::fashion_preprocess(src.data(), out.data(), 5, 0), zsq::Error);
}

TEST_CASE("fashion-mnist: crop offsets and flips move pixels where expected") {
  // One marked pixel at source (row 0, column 0), plus a distinct value at (27, 27).
  std::vector<std::uint8_t> src(784, 0);
  src[0] = 255;
  src[27 * 28 + 27] = 128;
  std::vector<float> out(1024);
  const float white = zsq::fashion_normalize(255);
  const float grey = zsq::fashion_normalize(128);
  auto where = [&](float v) {
    std::vector<std::pair<int, int>> at;
    for (int i = 0; i < 1024; ++i) {
      if (out[i] == v) at.emplace_back(i / 32, i % 32);
    }
    return at;
  };
  using P = std::vector<std::pair<int, int>>;
  zsq::fashion_preprocess(src.data(), out.data(), 2, 2, false);  // centred: +2
  CHECK(where(white) == P{{2, 2}});
  CHECK(where(grey) == P{{29, 29}});
  zsq::fashion_preprocess(src.data(), out.data(), 0, 0, false);  // crop from the top-left: +4
  CHECK(where(white) == P{{4, 4}});
  CHECK(where(grey) == P{{31, 31}});
  zsq::fashion_preprocess(src.data(), out.data(), 4, 1, false);  // dy = 4 -> +0 rows, dx = 1 -> +3 cols
  CHECK(where(white) == P{{0, 3}});
  CHECK(where(grey) == P{{27, 30}});
  zsq::fashion_preprocess(src.data(), out.data(), 2, 2, true);  // centred and mirrored
  CHECK(where(white) == P{{2, 29}});
  CHECK(where(grey) == P{{29, 2}});
  zsq::fashion_preprocess(src.data(), out.data(), 3, 0, true);  // mirrored crop of columns 0..31 of 36
  CHECK(where(white) == P{{1, 27}});
  CHECK(where(grey) == P{{28, 0}});

  // Against the formula on a dense random image for every offset and flip.
  const auto img = noise(784, 9);
  for (int dy = 0; dy <= 4; ++dy) {
    for (int dx = 0; dx <= 4; ++dx) {
      for (bool flip : {false, true}) {
        zsq::fashion_preprocess(img.data(), out.data(), dy, dx, flip);
        int bad = 0;
        for (int y = 0; y < 32; ++y) {
          for (int x = 0; x < 32; ++x) {
            const int sy = y + dy - 4, sx = (flip ? 31 - x : x) + dx - 4;
            const bool in = sy >= 0 && sy < 28 && sx >= 0 && sx < 28;
            const float want = in ? zsq::fashion_normalize(img[sy * 28 + sx]) : zsq::kFashionBlack;
            bad += out[y * 32 + x] != want;
          }
        }
        CHECK(bad == 0);
      }
    }
  }
}

TEST_CASE("fashion-mnist: batch loader order, partial batches and determinism") {
  const FashionMnist data = synthetic(1000);
  BatchLoader plain(data, 128, false, false, zsq::Rng(7));
  CHECK(plain.batches_per_epoch() == 8);
  Tensor x, y;
  std::int64_t batches = 0, total = 0;
  while (plain.next(x, y)) {
    CHECK(x.shape() == zsq::Shape{y.numel(), 1, 32, 32});
    CHECK(y.dtype() == zsq::DType::s32);
    for (std::int64_t i = 0; i < y.numel(); ++i) {
      const std::int64_t index = total + i;  // unshuffled
      CHECK(y.data<std::int32_t>()[i] == index % 10);
      CHECK(x.f32()[i * 1024 + 16 * 32 + 16] ==
            zsq::fashion_normalize(static_cast<std::uint8_t>(index % 200 + 1)));
      CHECK(x.f32()[i * 1024] == zsq::kFashionBlack);
    }
    total += y.numel();
    ++batches;
  }
  CHECK(batches == 8);
  CHECK(total == 1000);
  CHECK(y.numel() == 1000 - 7 * 128);  // last partial batch kept

  BatchLoader dropping(data, 128, true, false, zsq::Rng(7), true);
  CHECK(dropping.batches_per_epoch() == 7);
  CHECK(epoch_labels_and_order(dropping).size() == 7 * 128);

  BatchLoader a(data, 100, true, true, zsq::Rng(3));
  BatchLoader b(data, 100, true, true, zsq::Rng(3));
  std::vector<float> fa, fb;
  const auto la = epoch_labels_and_order(a, &fa);
  const auto order0 = a.order();
  CHECK(std::set<std::int64_t>(order0.begin(), order0.end()).size() == 1000);  // a permutation
  a.start_epoch(1);
  const auto order1 = a.order();
  CHECK(order0 != order1);  // reshuffled across epochs
  a.start_epoch(2);
  const auto order2 = a.order();
  std::vector<float> fa2;
  const auto la2 = epoch_labels_and_order(a, &fa2);
  // A fresh loader resuming at epoch 2 reproduces the same order and the same augmentation.
  b.start_epoch(2);
  CHECK(b.order() == order2);
  CHECK(epoch_labels_and_order(b, &fb) == la2);
  CHECK(fb == fa2);
  b.start_epoch(0);
  CHECK(b.order() == order0);
  CHECK(BatchLoader(data, 100, true, true, zsq::Rng(4)).order() != order0);  // seed matters
}

TEST_CASE("fashion-mnist: augmented batches are crops/flips of the right image") {
  FashionMnist data;
  data.labels = {0, 1, 2, 3};
  data.images = noise(4 * 784, 11);
  BatchLoader loader(data, 4, false, true, zsq::Rng(1));
  int flips = 0, images = 0;
  std::set<std::pair<int, int>> offsets;
  std::vector<float> ref(1024);
  for (int epoch = 0; epoch < 50; ++epoch) {
    loader.start_epoch(epoch);
    Tensor x, y;
    REQUIRE(loader.next(x, y));
    for (int i = 0; i < 4; ++i) {
      bool found = false;
      for (int dy = 0; dy <= 4 && !found; ++dy) {
        for (int dx = 0; dx <= 4 && !found; ++dx) {
          for (bool flip : {false, true}) {
            zsq::fashion_preprocess(data.image(i), ref.data(), dy, dx, flip);
            if (std::equal(ref.begin(), ref.end(), x.f32() + i * 1024)) {
              found = true;
              flips += flip;
              offsets.emplace(dy, dx);
              break;
            }
          }
        }
      }
      CHECK(found);
      ++images;
    }
  }
  CHECK(flips > images / 4);  // p = 0.5 over 200 draws
  CHECK(flips < images * 3 / 4);
  CHECK(offsets.size() == 25);
}

TEST_CASE("fashion-mnist: the real test split, when installed") {
  if (!fs::is_directory(zsq::kFashionMnistDir)) {
    MESSAGE("skipped: " << zsq::kFashionMnistDir << " not found (apt-get install dataset-fashion-mnist)");
    return;
  }
  const FashionMnist test = zsq::load_fashion_mnist(zsq::kFashionMnistDir, zsq::Split::test);
  REQUIRE(test.size() == 10000);
  std::vector<int> counts(10, 0);
  for (auto label : test.labels) counts.at(label)++;
  CHECK(counts == std::vector<int>(10, 1000));
  BatchLoader loader(test, 128, false, false, zsq::Rng(0));
  CHECK(loader.batches_per_epoch() == 79);
  Tensor x, y;
  REQUIRE(loader.next(x, y));
  CHECK(y.data<std::int32_t>()[0] == test.labels[0]);
}
