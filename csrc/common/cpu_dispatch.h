// Runtime CPU dispatch for the hot loops of the CPU kernels: with GCC on x86-64 Linux a function
// marked INVRENDER_CPU_CLONES is compiled twice, for baseline x86-64 and for x86-64-v3 (AVX2,
// FMA), and the loader picks the clone the machine supports (an ifunc). The math inlined into it
// is compiled for each clone. Results may differ between the two clones in the last bits (fused
// multiply-adds); on one machine they are always the same.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(INVRENDER_NO_CPU_CLONES)
#define INVRENDER_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define INVRENDER_CPU_CLONES
#endif
