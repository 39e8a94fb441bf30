// notes.h: notes to the user on stderr ("speedrun: note: ..."): things a run noticed that do not
// stop it (a flag it does not use, more threads than cores, a resume by another build). In a
// data-parallel job every rank runs the same command and would say the same thing once per rank:
// only rank 0 says it (the others call set_notes_quiet(true); src/dist/dist_train.cpp).
#pragma once
#include <utility>

#include <fmt/format.h>

namespace sr {

void set_notes_quiet(bool quiet);
bool notes_quiet();

template <class... A>
void note(fmt::format_string<A...> f, A&&... args) {
    if (notes_quiet()) return;
    fmt::print(stderr, "speedrun: note: {}\n", fmt::format(f, std::forward<A>(args)...));
}

}  // namespace sr
