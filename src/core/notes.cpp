// notes.cpp: see notes.h.
#include "core/notes.h"

#include <atomic>

namespace sr {
namespace {
std::atomic<bool> quiet{false};
}  // namespace

void set_notes_quiet(bool q) { quiet = q; }
bool notes_quiet() { return quiet; }

}  // namespace sr
