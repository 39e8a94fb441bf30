// rng.h: the one random number generator of the recipe (host side).
// splitmix64 seeding + xoshiro256**: fast, well tested, identical on every platform, so a seed
// gives the same augmentation and the same initial weights on every machine and backend.
#pragma once
#include <cmath>
#include <cstdint>

namespace sr {

class Rng {
public:
    explicit Rng(uint64_t seed = 0) { reseed(seed); }
    void reseed(uint64_t seed) {
        for (auto& s : s_) {
            seed += 0x9E3779B97F4A7C15ull;
            uint64_t z = seed;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            s = z ^ (z >> 31);
        }
    }
    uint64_t next() {
        const uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0]; s_[3] ^= s_[1]; s_[1] ^= s_[2]; s_[0] ^= s_[3];
        s_[2] ^= t; s_[3] = rotl(s_[3], 45);
        return result;
    }
    // uniform in [0, 1)
    double uniform() { return (next() >> 11) * 0x1.0p-53; }
    float uniform(float lo, float hi) { return lo + float(uniform()) * (hi - lo); }
    // uniform integer in [0, n)
    uint32_t below(uint32_t n) { return uint32_t((uint64_t(uint32_t(next() >> 32)) * n) >> 32); }
    float normal() {
        double u1 = uniform(), u2 = uniform();
        if (u1 < 1e-300) u1 = 1e-300;
        return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
    // the whole state, for checkpoints
    const uint64_t* state() const { return s_; }
    void set_state(const uint64_t* s) { for (int i = 0; i < 4; ++i) s_[i] = s[i]; }

private:
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    uint64_t s_[4];
};

}  // namespace sr
