#include "ops/cpu/dnnl_context.h"

namespace zsq::ops::cpu {

dnnl::engine& dnnl_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& dnnl_stream() {
  static dnnl::stream stream(dnnl_engine());
  return stream;
}

dnnl::memory::dims to_dims(const Shape& shape) {
  return dnnl::memory::dims(shape.begin(), shape.end());
}

dnnl::memory::desc activation_desc(const Shape& shape, MemoryFormat format) {
  ZSQ_CHECK(shape.size() == 4, "activation_desc: 4-D shape expected, got {}", shape_str(shape));
  return {to_dims(shape), dnnl::memory::data_type::f32,
          format == MemoryFormat::channels_last ? dnnl::memory::format_tag::nhwc
                                                : dnnl::memory::format_tag::nchw};
}

dnnl::memory::desc activation_desc(const Tensor& t) {
  return activation_desc(t.shape(), t.format());
}

namespace {
dnnl::reorder& cached_reorder(const dnnl::memory::desc& from, const dnnl::memory::desc& to) {
  // Descriptors have no hash; their serialized blobs are unique per layout.
  auto blob = [](const dnnl::memory::desc& d) {
    const auto& raw = d.data;
    return std::string(reinterpret_cast<const char*>(&raw), sizeof(raw));
  };
  return dnnl_cached<dnnl::reorder>("reorder:" + blob(from) + "->" + blob(to), [&] {
    return dnnl::reorder(dnnl::reorder::primitive_desc(dnnl_engine(), from, dnnl_engine(), to));
  });
}
}  // namespace

dnnl::memory ReorderedMemory::scratch(const dnnl::memory::desc& want, Tensor& holder) {
  const auto floats = static_cast<std::int64_t>((want.get_size() + sizeof(float) - 1) / sizeof(float));
  holder = Tensor::empty({floats});
  return {want, dnnl_engine(), holder.raw_data()};
}

ReorderedMemory ReorderedMemory::input(const dnnl::memory::desc& want, const dnnl::memory::desc& have,
                                       void* data) {
  ReorderedMemory m;
  m.user_ = dnnl::memory(have, dnnl_engine(), data);
  if (want == have) {
    m.primitive_ = m.user_;
    return m;
  }
  m.primitive_ = scratch(want, m.scratch_holder_);
  m.reordered_ = true;
  cached_reorder(have, want).execute(dnnl_stream(), m.user_, m.primitive_);
  return m;
}

ReorderedMemory ReorderedMemory::output(const dnnl::memory::desc& want, const dnnl::memory::desc& have,
                                        void* data) {
  ReorderedMemory m;
  m.user_ = dnnl::memory(have, dnnl_engine(), data);
  if (want == have) {
    m.primitive_ = m.user_;
    return m;
  }
  m.primitive_ = scratch(want, m.scratch_holder_);
  m.reordered_ = true;
  return m;
}

void ReorderedMemory::finish() {
  if (reordered_)
    cached_reorder(primitive_.get_desc(), user_.get_desc()).execute(dnnl_stream(), primitive_, user_);
}

}  // namespace zsq::ops::cpu
