// Status: the result of an operation that can fail, carrying a message that names
// what failed (the key, tensor, file or URL at fault). No exception crosses the
// engine's API; every fallible call returns a Status (or a Result<T>).
//
// Thread-safety: a Status is an immutable value; copies may be used from any thread.
#pragma once

#include <string>
#include <utility>

namespace ds4 {

class Status {
 public:
  Status() = default;  // OK
  static Status Ok() { return Status(); }
  static Status Error(std::string message) { return Status(std::move(message)); }

  bool ok() const { return !failed_; }
  const std::string& message() const { return message_; }

  // Prefixes the message with context, e.g. Status.wrap("model.gguf").
  Status wrap(const std::string& context) const {
    if (ok()) return *this;
    return Status(context + ": " + message_);
  }

 private:
  explicit Status(std::string message) : failed_(true), message_(std::move(message)) {}
  bool failed_ = false;
  std::string message_;
};

// A value or the Status explaining why there is none.
template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}            // NOLINT: implicit on purpose
  Result(Status status) : status_(std::move(status)) {}    // NOLINT: must be an error
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() { return value_; }
  const T& value() const { return value_; }
  T* operator->() { return &value_; }
  const T* operator->() const { return &value_; }
  T& operator*() { return value_; }

 private:
  Status status_;
  T value_{};
};

}  // namespace ds4

// Returns early from the enclosing function when `expr` yields a failed Status.
#define DS4_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::ds4::Status ds4_status_ = (expr);        \
    if (!ds4_status_.ok()) return ds4_status_; \
  } while (0)
