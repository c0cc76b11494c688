/* See blas_threads.h. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

#include "parallel/blas_threads.h"

typedef int (*get_fn)(void);
typedef void (*set_fn)(int);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static get_fn get_threads;
static set_fn set_threads;
static const char *kind = "other";

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int depth;      /* calls currently inside a serial section */
static int saved;      /* the BLAS's thread count when the first of them entered */

/* dlsym returns an object pointer; POSIX guarantees it converts to a function pointer. */
static void *lookup(const char *name)
{
    return dlsym(RTLD_DEFAULT, name);
}

static void find_blas(void)
{
    void *g = lookup("openblas_get_num_threads"), *s = lookup("openblas_set_num_threads");
    if (g && s) {
        kind = "OpenBLAS";
    } else {
        g = lookup("bli_thread_get_num_threads");
        s = lookup("bli_thread_set_num_threads");
        if (g && s)
            kind = "BLIS";
    }
    if (g && s) {
        memcpy(&get_threads, &g, sizeof g);
        memcpy(&set_threads, &s, sizeof s);
    }
}

const char *attn_blas_threading_kind(void)
{
    pthread_once(&once, find_blas);
    return kind;
}

void attn_blas_serial_enter(void)
{
    pthread_once(&once, find_blas);
    if (!get_threads)
        return;
    pthread_mutex_lock(&lock);
    if (depth++ == 0) {
        saved = get_threads();
        if (saved != 1)
            set_threads(1);
    }
    pthread_mutex_unlock(&lock);
}

void attn_blas_serial_leave(void)
{
    if (!get_threads)
        return;
    pthread_mutex_lock(&lock);
    if (--depth == 0 && saved != 1 && saved > 0)
        set_threads(saved);
    pthread_mutex_unlock(&lock);
}
