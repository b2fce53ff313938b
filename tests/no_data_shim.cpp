// LD_PRELOAD shim for the zero-shot promise test: any attempt to open a file or list a directory under
// one of the colon-separated prefixes in $ZSQ_FORBIDDEN_PATHS ends the process with status 97 and a
// message naming the path. `zsq quantize` must run to completion under it with the data set's
// directories forbidden; `zsq eval` under it must die (the positive control that the shim works).
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
void check_path(const char* path) {
  const char* forbidden = std::getenv("ZSQ_FORBIDDEN_PATHS");
  if (path == nullptr || forbidden == nullptr) return;
  std::string list(forbidden);
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t end = std::min(list.find(':', start), list.size());
    const std::string prefix = list.substr(start, end - start);
    if (!prefix.empty() && std::strncmp(path, prefix.c_str(), prefix.size()) == 0) {
      const std::string msg = "zero-shot violation: opened " + std::string(path) + "\n";
      (void)!write(2, msg.data(), msg.size());
      _exit(97);
    }
    start = end + 1;
  }
}

template <typename F>
F real(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

mode_t mode_arg(int flags, va_list args) {
  return (flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE ? static_cast<mode_t>(va_arg(args, int))
                                                                   : 0;
}
}  // namespace

extern "C" {
int open(const char* path, int flags, ...) {
  check_path(path);
  va_list args;
  va_start(args, flags);
  const mode_t mode = mode_arg(flags, args);
  va_end(args);
  return real<int (*)(const char*, int, ...)>("open")(path, flags, mode);
}
int open64(const char* path, int flags, ...) {
  check_path(path);
  va_list args;
  va_start(args, flags);
  const mode_t mode = mode_arg(flags, args);
  va_end(args);
  return real<int (*)(const char*, int, ...)>("open64")(path, flags, mode);
}
int openat(int dirfd, const char* path, int flags, ...) {
  check_path(path);
  va_list args;
  va_start(args, flags);
  const mode_t mode = mode_arg(flags, args);
  va_end(args);
  return real<int (*)(int, const char*, int, ...)>("openat")(dirfd, path, flags, mode);
}
FILE* fopen(const char* path, const char* mode) {
  check_path(path);
  return real<FILE* (*)(const char*, const char*)>("fopen")(path, mode);
}
FILE* fopen64(const char* path, const char* mode) {
  check_path(path);
  return real<FILE* (*)(const char*, const char*)>("fopen64")(path, mode);
}
DIR* opendir(const char* path) {
  check_path(path);
  return real<DIR* (*)(const char*)>("opendir")(path);
}
}
