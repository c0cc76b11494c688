/* See blas_threads.h. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

#include "parallel/blas_threads.h"

typedef int (*get_fn)(void);
typedef void (*set_fn)(int);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const char *kind = "other";
static get_fn global_get, omp_get;   /* at most one of the two families is used */
static set_fn global_set, omp_set;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int depth; /* calls currently inside a process-wide serial section */
static int saved; /* the BLAS's thread count when the first of them entered */

static _Thread_local int worker_serial; /* this worker thread's OpenMP setting is already 1 */

/* dlsym returns an object pointer; POSIX guarantees it converts to a function pointer. */
static int lookup_pair(const char *get, const char *set, get_fn *g, set_fn *s)
{
    void *pg = dlsym(RTLD_DEFAULT, get), *ps = dlsym(RTLD_DEFAULT, set);
    if (!pg || !ps)
        return 0;
    memcpy(g, &pg, sizeof pg);
    memcpy(s, &ps, sizeof ps);
    return 1;
}

static void find_blas(void)
{
    void *par = dlsym(RTLD_DEFAULT, "openblas_get_parallel");
    if (par) {
        get_fn get_parallel;
        memcpy(&get_parallel, &par, sizeof par);
        int mode = get_parallel();
        if (mode == 2 && lookup_pair("omp_get_max_threads", "omp_set_num_threads", &omp_get, &omp_set))
            kind = "OpenBLAS (OpenMP)";
        else if (mode == 0)
            kind = "OpenBLAS (serial)";
        else if (lookup_pair("openblas_get_num_threads", "openblas_set_num_threads", &global_get,
                             &global_set))
            kind = "OpenBLAS (pthreads)";
    } else if (lookup_pair("bli_thread_get_num_threads", "bli_thread_set_num_threads", &global_get,
                           &global_set)) {
        kind = "BLIS";
    }
}

/* Detect when the library is loaded rather than on the first attn_forward: a failed dlsym
 * allocates its error message, and attn_forward must not allocate. */
#if defined(__GNUC__)
__attribute__((constructor)) static void find_blas_at_load(void)
{
    pthread_once(&once, find_blas);
}
#endif

const char *attn_blas_threading_kind(void)
{
    pthread_once(&once, find_blas);
    return kind;
}

void attn_blas_serial_enter(attn_blas_saved *s)
{
    pthread_once(&once, find_blas);
    s->omp_threads = 0;
    s->global = 0;
    if (omp_get) {
        int n = omp_get();
        if (n != 1) {
            s->omp_threads = n;
            omp_set(1);
        }
        return;
    }
    if (!global_get)
        return;
    pthread_mutex_lock(&lock);
    if (depth++ == 0) {
        /* Only a count above 1 needs changing. BLIS reports -1 while neither the program nor
         * the environment set one, and then runs single-threaded already; setting -1 back
         * explicitly is not the same as never setting it, so that state is left alone. */
        saved = global_get();
        if (saved > 1)
            global_set(1);
    }
    s->global = 1;
    pthread_mutex_unlock(&lock);
}

void attn_blas_serial_leave(const attn_blas_saved *s)
{
    if (s->omp_threads > 0)
        omp_set(s->omp_threads);
    if (!s->global)
        return;
    pthread_mutex_lock(&lock);
    if (--depth == 0 && saved > 1)
        global_set(saved);
    pthread_mutex_unlock(&lock);
}

void attn_blas_serial_worker(void)
{
    if (worker_serial)
        return;
    pthread_once(&once, find_blas);
    if (omp_set)
        omp_set(1);
    worker_serial = 1;
}

void attn_blas_fork_prepare(void)
{
    pthread_mutex_lock(&lock);
}

void attn_blas_fork_parent(void)
{
    pthread_mutex_unlock(&lock);
}

void attn_blas_fork_child(void)
{
    if (depth > 0) {
        depth = 0;
        if (saved > 1)
            global_set(saved);
    }
    pthread_mutex_unlock(&lock);
}
