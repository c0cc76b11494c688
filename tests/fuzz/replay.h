/*
 * The replay driver (replay.c) runs a fuzz target on files without libFuzzer, so that ctest
 * replays the committed corpora with any compiler: main() passes every file named on the
 * command line, and every file of every directory named (names starting with '.' skipped), to
 * LLVMFuzzerTestOneInput, then returns replay_summary(files), which each target's replay build
 * provides: it prints the target's outcome counts and decides the exit status.
 */
#ifndef ATTN_FUZZ_REPLAY_H
#define ATTN_FUZZ_REPLAY_H

#include <stddef.h>
#include <stdint.h>

/* Inputs longer than this are cut to it. */
#define REPLAY_MAX_INPUT (1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int replay_summary(int files);

#endif
