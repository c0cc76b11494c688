/* The replay summary of the .npy fuzz target (fuzz_npy.c); the driver is replay.c. */
#include <stdio.h>

#include "replay.h"

extern long npy_fuzz_outcomes[2];

int replay_summary(int files)
{
    printf("inputs: %ld rejected with a message, %ld accepted and checked\n", npy_fuzz_outcomes[0],
           npy_fuzz_outcomes[1]);
    printf("%d passed, 0 failed\n", files);
    /* Both outcomes must occur, or the corpus has lost its point. */
    return files > 0 && npy_fuzz_outcomes[0] > 0 && npy_fuzz_outcomes[1] > 0 ? 0 : 1;
}
