#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cases.h"
#include "util.h"

npy_array case_load(const char *dir, const char *case_name, const char *file, int required)
{
    char path[512], err[600];
    snprintf(path, sizeof path, "%s/%s/%s.npy", dir, case_name, file);
    npy_array a;
    memset(&a, 0, sizeof a);
    if (npy_load(path, &a, err, sizeof err) != 0) {
        if (required)
            fail_msg("%s", err);
        memset(&a, 0, sizeof a);
    }
    return a;
}

attn_strides case_broadcast_strides(const npy_array *a)
{
    attn_strides s = {a->shape[0] == 1 ? 0 : a->shape[1] * a->shape[2] * a->shape[3],
                      a->shape[1] == 1 ? 0 : a->shape[2] * a->shape[3],
                      a->shape[2] == 1 ? 0 : a->shape[3]};
    return s;
}

void case_expect_close_1e9(const char *name, const char *what, const double *ours,
                           const double *theirs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs(ours[i] - theirs[i]) <= 1e-9 * (1.0 + fabs(theirs[i]))))
            fail_msg("%s oracle %s[%zu] = %.12g, PyTorch %.12g", name, what, i, ours[i],
                     theirs[i]);
}

int case_run_group(const char *group, int n, void (*test)(void **state))
{
    struct CMUnitTest *tests = xcalloc((size_t)n, sizeof *tests);
    char(*names)[16] = xcalloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "case%03d", i);
        tests[i] = (struct CMUnitTest){names[i], test, NULL, NULL, (void *)(intptr_t)i};
    }
    int failed = _cmocka_run_group_tests(group, tests, (size_t)n, NULL, NULL);
    free(names);
    free(tests);
    return failed;
}
