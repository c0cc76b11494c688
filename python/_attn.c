/*
 * attn._attn: the C core of the Python module. It maps Python buffers (PEP 3118, e.g. numpy
 * arrays) onto libattn's strided views without copying and runs attn_forward,
 * attn_backward, attn_dropout_mask, attn_merge and the K/V cache's calls (attn_kv_cache.h) with
 * the GIL released. It takes every tensor
 * already in libattn's logical order [batch, head, seq, feature]
 * (a [B, S, H, D] array is passed as its transposed view, which only permutes strides); the
 * Python layer in attn/__init__.py does the dtype conversions, broadcasting and layouts, and
 * allocates the outputs. This core still checks every shape and stride it is given, so that a
 * wrong call can raise but never make libattn read or write outside a buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include <stdint.h>
#include <string.h>

#include <attn/attn.h>
#include <attn/attn_kv_cache.h>
#include <attn/attn_mha.h>

/* ---- errors -------------------------------------------------------------------------------- */

/* attn._attn.CapacityError, a MemoryError: a K/V cache has no room (ATTN_ERR_CAPACITY). */
static PyObject *CapacityError;

/* Raises the exception for a libattn status: ValueError for the argument statuses, MemoryError
 * for ATTN_ERR_NO_MEMORY, CapacityError (a MemoryError) for ATTN_ERR_CAPACITY, RuntimeError
 * otherwise. The message is attn_last_error's text followed
 * by the status name; the exception's `status` attribute holds the numeric status. */
static PyObject *raise_status(attn_status st, const char *message)
{
    PyObject *type = PyExc_RuntimeError;
    if (st == ATTN_ERR_NO_MEMORY)
        type = PyExc_MemoryError;
    else if (st == ATTN_ERR_CAPACITY && CapacityError)
        type = CapacityError;
    else if (st >= ATTN_ERR_NULL_POINTER && st <= ATTN_ERR_WORKSPACE_ALIGN)
        type = PyExc_ValueError;
    /* "ATTN_ERR_HEADS: kv_heads does not divide q_heads" -> "ATTN_ERR_HEADS" */
    const char *text = attn_status_str(st);
    char name[64];
    size_t len = strcspn(text, ":");
    if (len >= sizeof name)
        len = sizeof name - 1;
    memcpy(name, text, len);
    name[len] = '\0';
    PyObject *exc = PyObject_CallFunction(type, "N", PyUnicode_FromFormat(
        "%s (%s)", message && *message ? message : text, name));
    if (!exc)
        return NULL;
    PyObject *code = PyLong_FromLong((long)st);
    if (!code || PyObject_SetAttrString(exc, "status", code) < 0) {
        Py_XDECREF(code);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(code);
    PyErr_SetObject(type, exc);
    Py_DECREF(exc);
    return NULL;
}

/* ---- buffers ------------------------------------------------------------------------------- */

enum elem_kind { ELEM_F32, ELEM_BOOL, ELEM_I32, ELEM_F16, ELEM_BF16, ELEM_U32 };

/* One acquired buffer. `held` tells whether `view` must be released. */
typedef struct tensor {
    Py_buffer view;
    int held;
    int64_t shape[4];
    int64_t strides[4]; /* in elements; 0 for axes of length 1 */
} tensor;

static void release(tensor *t)
{
    if (t->held)
        PyBuffer_Release(&t->view);
    t->held = 0;
}

/* True if a struct-module format string denotes the element kind in native byte order. */
static int format_is(const char *fmt, enum elem_kind kind, Py_ssize_t itemsize)
{
    if (!fmt)
        fmt = "B";
    if (*fmt == '@' || *fmt == '=')
        fmt++;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    else if (*fmt == '<')
        fmt++;
#else
    else if (*fmt == '>' || *fmt == '!')
        fmt++;
#endif
    switch (kind) {
    case ELEM_F32:
        return itemsize == 4 && strcmp(fmt, "f") == 0;
    case ELEM_BOOL:
        return itemsize == 1 && (strcmp(fmt, "?") == 0 || strcmp(fmt, "B") == 0);
    case ELEM_I32:
        return itemsize == 4 &&
               (strcmp(fmt, "i") == 0 || (sizeof(long) == 4 && strcmp(fmt, "l") == 0));
    case ELEM_U32:
        return itemsize == 4 &&
               (strcmp(fmt, "I") == 0 || (sizeof(long) == 4 && strcmp(fmt, "L") == 0));
    case ELEM_F16: /* binary16, or its bits as uint16 */
        return itemsize == 2 && (strcmp(fmt, "e") == 0 || strcmp(fmt, "H") == 0);
    case ELEM_BF16: /* no buffer format names bfloat16: its bits as uint16 */
        return itemsize == 2 && strcmp(fmt, "H") == 0;
    }
    return 0;
}

static const char *kind_name(enum elem_kind kind)
{
    switch (kind) {
    case ELEM_F32:
        return "float32";
    case ELEM_BOOL:
        return "bool or uint8";
    case ELEM_I32:
        return "int32";
    case ELEM_F16:
        return "float16";
    case ELEM_BF16:
        return "uint16 (bfloat16 bits)";
    case ELEM_U32:
        return "uint32";
    }
    return "?";
}

/*
 * Acquires `obj` as a tensor of `ndim` dimensions and the given element kind. Strides must be
 * non-negative whole numbers of elements and the last axis contiguous (strides of axes of
 * length 0 or 1 are ignored: recorded as 0);
 * `contiguous` additionally asks for C order. Raises ValueError and returns -1 otherwise.
 */
static int acquire(PyObject *obj, const char *name, int ndim, enum elem_kind kind, int writable,
                   int contiguous, tensor *t)
{
    memset(t, 0, sizeof *t);
    int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &t->view, flags) < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_Format(PyExc_ValueError, "%s: not a %sbuffer of %s (%S)", name,
                     writable ? "writable " : "", kind_name(kind), value ? value : Py_None);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    t->held = 1;
    const Py_buffer *b = &t->view;
    if (b->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got %d", name, ndim, b->ndim);
        goto fail;
    }
    if (!format_is(b->format, kind, b->itemsize)) {
        PyErr_Format(PyExc_ValueError, "%s: expected native %s elements, got format '%s'", name,
                     kind_name(kind), b->format ? b->format : "B");
        goto fail;
    }
    if ((uintptr_t)b->buf % (uintptr_t)b->itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: data is not aligned to its %zd-byte elements", name,
                     b->itemsize);
        goto fail;
    }
    if (b->len == 0) { /* no element is ever read or written: any strides will do */
        for (int i = 0; i < ndim; i++)
            t->shape[i] = b->shape[i];
        return 0;
    }
    int64_t expect = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = b->shape[i];
        Py_ssize_t s = b->strides ? b->strides[i] : (Py_ssize_t)(expect * b->itemsize);
        if (b->shape[i] <= 1) {
            t->strides[i] = 0; /* never stepped along: any value is fine */
            continue;
        }
        if (s < 0 || s % b->itemsize != 0) {
            PyErr_Format(PyExc_ValueError,
                         "%s: stride %zd bytes of axis %d is negative or not a whole number of "
                         "elements", name, s, i);
            goto fail;
        }
        t->strides[i] = s / b->itemsize;
        if ((i == ndim - 1 || contiguous) && t->strides[i] != expect && b->shape[i] > 1) {
            PyErr_Format(PyExc_ValueError, "%s: %s", name,
                         i == ndim - 1 ? "the last axis must be contiguous"
                                       : "must be C-contiguous");
            goto fail;
        }
        expect *= b->shape[i];
    }
    return 0;
fail:
    release(t);
    return -1;
}

static attn_strides strides_of(const tensor *t)
{
    attn_strides s = {t->strides[0], t->strides[1], t->strides[2]};
    return s;
}

/* Raises ValueError unless the tensor has exactly the given 4 (or 3) sizes. */
static int check_shape(const tensor *t, const char *name, int ndim, const int64_t *want,
                       const char *what)
{
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != want[i]) {
            if (ndim == 4)
                PyErr_Format(PyExc_ValueError,
                             "%s: shape (%lld, %lld, %lld, %lld) does not match %s = "
                             "(%lld, %lld, %lld, %lld)", name, (long long)t->shape[0],
                             (long long)t->shape[1], (long long)t->shape[2],
                             (long long)t->shape[3], what, (long long)want[0],
                             (long long)want[1], (long long)want[2], (long long)want[3]);
            else
                PyErr_Format(PyExc_ValueError,
                             "%s: shape (%lld, %lld, %lld) does not match %s = (%lld, %lld, %lld)",
                             name, (long long)t->shape[0], (long long)t->shape[1],
                             (long long)t->shape[2], what, (long long)want[0],
                             (long long)want[1], (long long)want[2]);
            return -1;
        }
    return 0;
}

/* ---- Context ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    attn_ctx *ctx;
    attn_desc desc;
    PyThread_type_lock lock; /* held during a call: one thread at a time uses the context */
} ContextObject;

static void context_dealloc(ContextObject *self)
{
    attn_destroy(self->ctx); /* no call can be running: a call holds a reference to self */
    if (self->lock)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_u32(PyObject *obj, const char *name, uint32_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (PyErr_Occurred() || v > UINT32_MAX) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s = %R must be an integer in [0, %u]", name, obj,
                     (unsigned)UINT32_MAX);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int parse_i64(PyObject *obj, const char *name, int64_t *out)
{
    long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s = %R must be an integer in the int64 range", name, obj);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

static int parse_u64(PyObject *obj, const char *name, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s = %R must be an integer in [0, 2**64 - 1]", name, obj);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

/* q_offset: None = libattn's default (kv_len - q_len), else an int64 other than the sentinel. */
static int parse_q_offset(PyObject *obj, int64_t *q_offset)
{
    *q_offset = ATTN_Q_OFFSET_DEFAULT;
    if (obj == Py_None)
        return 0;
    if (parse_i64(obj, "q_offset", q_offset))
        return -1;
    if (*q_offset == ATTN_Q_OFFSET_DEFAULT) { /* the sentinel is not a position */
        PyErr_Format(PyExc_ValueError, "q_offset = %R is outside [%lld, %lld]", obj,
                     (long long)-ATTN_MAX_DISTANCE, (long long)ATTN_MAX_DISTANCE);
        return -1;
    }
    return 0;
}

/* The element kind of K and V under the context's kv_dtype. */
static enum elem_kind kv_kind(const attn_desc *d)
{
    return d->kv_dtype == ATTN_KV_F16 ? ELEM_F16 : d->kv_dtype == ATTN_KV_BF16 ? ELEM_BF16
                                                                               : ELEM_F32;
}

/* Context(q_heads, kv_heads, qk_dim, v_dim, scale, causal, window_left, window_right,
 *         masked_rows, threads, ops=0, dropout=0.0, kv_dtype=0): libattn's meaning and encoding
 * (scale 0 = 1/sqrt(qk_dim), window bounds -1 = unbounded, masked_rows 0 = zero, 1 = NaN,
 * threads 0 = every processor, ops an OR of ATTN_OP_*, kv_dtype an attn_kv_dtype). */
static int context_init(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"q_heads", "kv_heads", "qk_dim", "v_dim", "scale", "causal",
                            "window_left", "window_right", "masked_rows", "threads", "ops",
                            "dropout", "kv_dtype", NULL};
    PyObject *qh, *kvh, *dk, *dv, *wl, *wr, *mr, *th, *oops = NULL, *okv = NULL;
    double scale, dropout = 0.0;
    int causal;
    if (self->ctx) {
        PyErr_SetString(PyExc_RuntimeError, "Context is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOdpOOOO|OdO:Context", names, &qh, &kvh,
                                     &dk, &dv, &scale, &causal, &wl, &wr, &mr, &th, &oops,
                                     &dropout, &okv))
        return -1;
    attn_desc d;
    attn_desc_init(&d);
    uint32_t masked_rows;
    if (parse_u32(qh, "q_heads", &d.q_heads) || parse_u32(kvh, "kv_heads", &d.kv_heads) ||
        parse_u32(dk, "qk_dim", &d.qk_dim) || parse_u32(dv, "v_dim", &d.v_dim) ||
        parse_i64(wl, "window_left", &d.window_left) ||
        parse_i64(wr, "window_right", &d.window_right) ||
        parse_u32(mr, "masked_rows", &masked_rows) || parse_u32(th, "threads", &d.threads) ||
        (oops && parse_u32(oops, "ops", &d.ops)) ||
        (okv && parse_u32(okv, "kv_dtype", &d.kv_dtype)))
        return -1;
    d.scale = (float)scale;
    d.dropout = (float)dropout; /* libattn checks the range (a NaN stays NaN) */
    d.flags = causal ? ATTN_CAUSAL : 0;
    d.masked_rows = (attn_masked_rows)masked_rows;
    if (masked_rows > 1) { /* an out-of-range enum value is not representable portably */
        PyErr_Format(PyExc_ValueError, "masked_rows = %u is not 0 (zero) or 1 (nan)", masked_rows);
        return -1;
    }
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    attn_ctx *ctx = NULL;
    attn_status st;
    const char *msg;
    Py_BEGIN_ALLOW_THREADS
    st = attn_create(&d, &ctx);
    msg = st == ATTN_OK ? "" : attn_last_error(NULL); /* thread-local: read on the same thread */
    Py_END_ALLOW_THREADS
    if (st != ATTN_OK) {
        raise_status(st, msg);
        return -1;
    }
    self->ctx = ctx;
    self->desc = d;
    return 0;
}

/* Acquires an object's lock (a Context's or an MHA's), waiting with the GIL released if
 * another thread holds it. */
static void take_lock(PyThread_type_lock lock)
{
    if (!PyThread_acquire_lock(lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

/* ---- K/V cache ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    attn_kv_cache *cache;
    attn_kv_cache_desc desc; /* as created: block_tokens and max_len resolved */
    PyThread_type_lock lock; /* held during every call on the cache (changes and reads alike) */
} KVCacheObject;

static PyTypeObject KVCacheType;

static void kvcache_dealloc(KVCacheObject *self)
{
    attn_kv_cache_destroy(self->cache); /* no call can be running: a call holds a reference */
    if (self->lock)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* KVCache(kv_heads, qk_dim, v_dim, dtype, max_seqs, capacity, block_tokens, max_len):
 * attn_kv_cache_desc's fields with libattn's encodings (dtype an attn_kv_dtype, block_tokens
 * 0 = 256, max_len 0 = capacity). */
static int kvcache_init(KVCacheObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"kv_heads", "qk_dim", "v_dim", "dtype", "max_seqs", "capacity",
                            "block_tokens", "max_len", NULL};
    PyObject *okvh, *odk, *odv, *odt, *oseqs, *ocap, *oblock, *omax;
    if (self->cache) {
        PyErr_SetString(PyExc_RuntimeError, "KVCache is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOO:KVCache", names, &okvh, &odk, &odv,
                                     &odt, &oseqs, &ocap, &oblock, &omax))
        return -1;
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    if (parse_u32(okvh, "kv_heads", &d.kv_heads) || parse_u32(odk, "qk_dim", &d.qk_dim) ||
        parse_u32(odv, "v_dim", &d.v_dim) || parse_u32(odt, "dtype", &d.dtype) ||
        parse_u32(oseqs, "max_seqs", &d.max_seqs) || parse_u64(ocap, "capacity", &d.capacity) ||
        parse_u32(oblock, "block_tokens", &d.block_tokens) ||
        parse_u64(omax, "max_len", &d.max_len))
        return -1;
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    attn_kv_cache *cache = NULL;
    attn_status st;
    const char *msg;
    Py_BEGIN_ALLOW_THREADS
    st = attn_kv_cache_create(&d, &cache);
    msg = st == ATTN_OK ? "" : attn_last_error(NULL); /* thread-local: read on the same thread */
    Py_END_ALLOW_THREADS
    if (st != ATTN_OK) {
        raise_status(st, msg);
        return -1;
    }
    if (!d.block_tokens)
        d.block_tokens = 256; /* the header's documented default */
    if (!d.max_len)
        d.max_len = d.capacity;
    self->cache = cache;
    self->desc = d;
    return 0;
}

/* Takes the cache's lock; raises ValueError (lock released) if the cache is closed. */
static int kvcache_enter(KVCacheObject *self)
{
    take_lock(self->lock);
    if (!self->cache) {
        PyThread_release_lock(self->lock);
        PyErr_SetString(PyExc_ValueError, "the KVCache is closed");
        return -1;
    }
    return 0;
}

/* Ends a call that changes the cache: releases the lock, raising for a failed status with the
 * cache's message (read before the lock is released). Returns None or NULL. */
static PyObject *kvcache_leave(KVCacheObject *self, attn_status st)
{
    if (st != ATTN_OK)
        raise_status(st, attn_kv_cache_last_error(self->cache));
    PyThread_release_lock(self->lock);
    if (st != ATTN_OK)
        return NULL;
    Py_RETURN_NONE;
}

/* append(seq, k, v): k [kv_heads, n, qk_dim], v [kv_heads, n, v_dim] float32 with
 * non-negative element strides and a contiguous last axis (any head and token strides). */
static PyObject *kvcache_append(KVCacheObject *self, PyObject *args)
{
    PyObject *oseq, *ok, *ov;
    uint32_t seq;
    if (!PyArg_ParseTuple(args, "OOO:append", &oseq, &ok, &ov) || parse_u32(oseq, "seq", &seq))
        return NULL;
    tensor k, v;
    v.held = 0;
    if (acquire(ok, "k", 3, ELEM_F32, 0, 0, &k))
        return NULL;
    PyObject *result = NULL;
    if (acquire(ov, "v", 3, ELEM_F32, 0, 0, &v))
        goto done;
    int64_t n = k.shape[1];
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "k: more than 2**32 - 1 tokens in one append");
        goto done;
    }
    {
        const int64_t wk[3] = {self->desc.kv_heads, n, self->desc.qk_dim};
        const int64_t wv[3] = {self->desc.kv_heads, n, self->desc.v_dim};
        if (check_shape(&k, "k", 3, wk, "(kv_heads, n, qk_dim)") ||
            check_shape(&v, "v", 3, wv, "(kv_heads, n, v_dim)"))
            goto done;
    }
    attn_strides ks = {0, k.strides[0], k.strides[1]}, vs = {0, v.strides[0], v.strides[1]};
    if (kvcache_enter(self))
        goto done;
    attn_status st;
    Py_BEGIN_ALLOW_THREADS
    st = attn_kv_cache_append(self->cache, seq, (uint32_t)n, k.view.buf, ks, v.view.buf, vs);
    Py_END_ALLOW_THREADS
    result = kvcache_leave(self, st);
done:
    release(&k);
    release(&v);
    return result;
}

/* len(seq) -> the number of tokens in sequence seq. */
static PyObject *kvcache_len(KVCacheObject *self, PyObject *args)
{
    PyObject *oseq;
    uint32_t seq;
    if (!PyArg_ParseTuple(args, "O:len", &oseq) || parse_u32(oseq, "seq", &seq))
        return NULL;
    if (kvcache_enter(self))
        return NULL;
    int64_t n = attn_kv_cache_len(self->cache, seq);
    PyThread_release_lock(self->lock);
    if (n < 0)
        return PyErr_Format(PyExc_ValueError, "seq = %u is outside [0, max_seqs = %u)", seq,
                            self->desc.max_seqs);
    return PyLong_FromLongLong((long long)n);
}

/* free_blocks() -> blocks no sequence uses. */
static PyObject *kvcache_free_blocks(KVCacheObject *self, PyObject *unused)
{
    (void)unused;
    if (kvcache_enter(self))
        return NULL;
    uint64_t n = attn_kv_cache_free_blocks(self->cache);
    PyThread_release_lock(self->lock);
    return PyLong_FromUnsignedLongLong((unsigned long long)n);
}

/* truncate(seq, len) */
static PyObject *kvcache_truncate(KVCacheObject *self, PyObject *args)
{
    PyObject *oseq, *olen;
    uint32_t seq;
    uint64_t len;
    if (!PyArg_ParseTuple(args, "OO:truncate", &oseq, &olen) || parse_u32(oseq, "seq", &seq) ||
        parse_u64(olen, "len", &len))
        return NULL;
    if (kvcache_enter(self))
        return NULL;
    attn_status st;
    Py_BEGIN_ALLOW_THREADS
    st = attn_kv_cache_truncate(self->cache, seq, len);
    Py_END_ALLOW_THREADS
    return kvcache_leave(self, st);
}

/* fork(src, dst) */
static PyObject *kvcache_fork(KVCacheObject *self, PyObject *args)
{
    PyObject *osrc, *odst;
    uint32_t src, dst;
    if (!PyArg_ParseTuple(args, "OO:fork", &osrc, &odst) || parse_u32(osrc, "src", &src) ||
        parse_u32(odst, "dst", &dst))
        return NULL;
    if (kvcache_enter(self))
        return NULL;
    attn_status st;
    Py_BEGIN_ALLOW_THREADS
    st = attn_kv_cache_fork(self->cache, src, dst);
    Py_END_ALLOW_THREADS
    return kvcache_leave(self, st);
}

/* reorder(from): from a C-contiguous uint32 buffer of n ids. */
static PyObject *kvcache_reorder(KVCacheObject *self, PyObject *args)
{
    PyObject *ofrom;
    if (!PyArg_ParseTuple(args, "O:reorder", &ofrom))
        return NULL;
    tensor from;
    if (acquire(ofrom, "from", 1, ELEM_U32, 0, 1, &from))
        return NULL;
    PyObject *result = NULL;
    if (from.shape[0] > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "from: more than 2**32 - 1 ids");
        goto done;
    }
    if (kvcache_enter(self))
        goto done;
    attn_status st;
    uint32_t n = (uint32_t)from.shape[0];
    static const uint32_t none[1] = {0};
    const uint32_t *ids = n ? (const uint32_t *)from.view.buf : none;
    Py_BEGIN_ALLOW_THREADS
    st = attn_kv_cache_reorder(self->cache, ids, n);
    Py_END_ALLOW_THREADS
    result = kvcache_leave(self, st);
done:
    release(&from);
    return result;
}

/* reset(): empties every sequence. */
static PyObject *kvcache_reset(KVCacheObject *self, PyObject *unused)
{
    (void)unused;
    if (kvcache_enter(self))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    attn_kv_cache_reset(self->cache);
    Py_END_ALLOW_THREADS
    PyThread_release_lock(self->lock);
    Py_RETURN_NONE;
}

/* close(): destroys the C cache now (waiting for a call in progress); later calls raise. */
static PyObject *kvcache_close(KVCacheObject *self, PyObject *unused)
{
    (void)unused;
    if (self->cache) {
        take_lock(self->lock);
        attn_kv_cache *cache = self->cache;
        self->cache = NULL;
        PyThread_release_lock(self->lock);
        attn_kv_cache_destroy(cache);
    }
    Py_RETURN_NONE;
}

static PyObject *kvcache_get_closed(KVCacheObject *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(self->cache == NULL);
}

/* The resolved descriptor: (kv_heads, qk_dim, v_dim, dtype, max_seqs, capacity, block_tokens,
 * max_len). */
static PyObject *kvcache_get_desc(KVCacheObject *self, void *unused)
{
    (void)unused;
    const attn_kv_cache_desc *d = &self->desc;
    return Py_BuildValue("(IIIIIKIK)", d->kv_heads, d->qk_dim, d->v_dim, d->dtype, d->max_seqs,
                         (unsigned long long)d->capacity, d->block_tokens,
                         (unsigned long long)d->max_len);
}

static PyObject *kvcache_get_size(KVCacheObject *self, void *unused)
{
    (void)unused;
    return PyLong_FromSize_t(attn_kv_cache_size(&self->desc));
}

static PyMethodDef kvcache_methods[] = {
    {"append", (PyCFunction)kvcache_append, METH_VARARGS,
     "append(seq, k, v)\n\nattn_kv_cache_append of k [kv_heads, n, qk_dim] and v [kv_heads, "
     "n, v_dim] (float32, any non-negative head and token strides)."},
    {"len", (PyCFunction)kvcache_len, METH_VARARGS, "len(seq) -> tokens in sequence seq"},
    {"free_blocks", (PyCFunction)kvcache_free_blocks, METH_NOARGS,
     "free_blocks() -> blocks used by no sequence"},
    {"truncate", (PyCFunction)kvcache_truncate, METH_VARARGS,
     "truncate(seq, len)\n\nattn_kv_cache_truncate"},
    {"fork", (PyCFunction)kvcache_fork, METH_VARARGS, "fork(src, dst)\n\nattn_kv_cache_fork"},
    {"reorder", (PyCFunction)kvcache_reorder, METH_VARARGS,
     "reorder(from)\n\nattn_kv_cache_reorder; from a C-contiguous uint32 buffer"},
    {"reset", (PyCFunction)kvcache_reset, METH_NOARGS, "reset()\n\nattn_kv_cache_reset"},
    {"close", (PyCFunction)kvcache_close, METH_NOARGS,
     "close()\n\nReleases the C cache; later calls raise ValueError."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef kvcache_getset[] = {
    {"closed", (getter)kvcache_get_closed, NULL, "True after close()", NULL},
    {"desc", (getter)kvcache_get_desc, NULL,
     "(kv_heads, qk_dim, v_dim, dtype, max_seqs, capacity, block_tokens, max_len)", NULL},
    {"nbytes", (getter)kvcache_get_size, NULL, "attn_kv_cache_size: bytes the cache holds", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject KVCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "attn._attn.KVCache",
    .tp_basicsize = sizeof(KVCacheObject),
    .tp_dealloc = (destructor)kvcache_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "KVCache(kv_heads, qk_dim, v_dim, dtype, max_seqs, capacity, block_tokens, "
              "max_len)\n\nAn attn_kv_cache: libattn's descriptor fields, with its encodings.",
    .tp_methods = kvcache_methods,
    .tp_getset = kvcache_getset,
    .tp_init = (initproc)kvcache_init,
    .tp_new = PyType_GenericNew,
};

/*
 * forward(q, k, v, out, q_offset, kv_lens, mask, bias, weights_mode, weights, lse, entropy)
 * q [B,Hq,Lq,Dk], k [B,Hkv,Lk,Dk], v [B,Hkv,Lk,Dv], out [B,Hq,Lq,Dv] (writable): float32 with
 * non-negative element strides and a contiguous last axis. q_offset: int or None (libattn's
 * default). kv_lens: None or C-contiguous int32 [B]. mask: None or bool/uint8 [B,Hq,Lq,Lk];
 * bias: None or float32 [B,Hq,Lq,Lk], both with a contiguous last axis. weights_mode: 0 none,
 * 1 per head (weights C-contiguous [B,Hq,Lq,Lk]), 2 head mean (weights [B,Lq,Lk]). lse, entropy:
 * None or C-contiguous float32 [B,Hq,Lq]. Returns None; the outputs are written in place.
 */
static PyObject *context_forward(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"q", "k", "v", "out", "q_offset", "kv_lens", "mask", "bias",
                            "weights_mode", "weights", "lse", "entropy", "dropout_seed",
                            "dropout_offset", NULL};
    PyObject *oq, *ok, *ov, *oout, *ooff = Py_None, *olens = Py_None, *omask = Py_None,
             *obias = Py_None, *ow = Py_None, *olse = Py_None, *oent = Py_None,
             *oseed = NULL, *odoff = NULL;
    int weights_mode = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OOOOiOOOOO:forward", names, &oq, &ok,
                                     &ov, &oout, &ooff, &olens, &omask, &obias, &weights_mode,
                                     &ow, &olse, &oent, &oseed, &odoff))
        return NULL;
    uint64_t seed = 0;
    uint32_t dropout_offset = 0;
    if ((oseed && parse_u64(oseed, "dropout_seed", &seed)) ||
        (odoff && parse_u32(odoff, "dropout_offset", &dropout_offset)))
        return NULL;
    if (weights_mode < 0 || weights_mode > 2) {
        PyErr_Format(PyExc_ValueError, "weights_mode = %d is not 0, 1 or 2", weights_mode);
        return NULL;
    }
    if ((weights_mode == 0) != (ow == Py_None)) {
        PyErr_SetString(PyExc_ValueError, weights_mode ? "weights_mode asks for weights but "
                                                         "weights is None"
                                                       : "weights given with weights_mode 0");
        return NULL;
    }
    int64_t q_offset;
    if (parse_q_offset(ooff, &q_offset))
        return NULL;

    const attn_desc *d = &self->desc;
    tensor q, k, v, out, lens, mask, bias, w, lse, ent;
    tensor *all[] = {&q, &k, &v, &out, &lens, &mask, &bias, &w, &lse, &ent};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        all[i]->held = 0;
    PyObject *result = NULL;

    if (acquire(oq, "q", 4, ELEM_F32, 0, 0, &q) || acquire(ok, "k", 4, kv_kind(d), 0, 0, &k) ||
        acquire(ov, "v", 4, kv_kind(d), 0, 0, &v) || acquire(oout, "out", 4, ELEM_F32, 1, 0, &out))
        goto done;
    int64_t B = q.shape[0], Lq = q.shape[2], Lk = k.shape[2];
    if (B > UINT32_MAX || Lq > UINT32_MAX || Lk > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "batch, q_len and kv_len must each fit 32 bits");
        goto done;
    }
    {
        const int64_t wq[4] = {B, d->q_heads, Lq, d->qk_dim};
        const int64_t wk[4] = {B, d->kv_heads, Lk, d->qk_dim};
        const int64_t wv[4] = {B, d->kv_heads, Lk, d->v_dim};
        const int64_t wo[4] = {B, d->q_heads, Lq, d->v_dim};
        const int64_t wm[4] = {B, d->q_heads, Lq, Lk};
        const int64_t wmean[3] = {B, Lq, Lk};
        const int64_t wl[3] = {B, d->q_heads, Lq};
        if (check_shape(&q, "q", 4, wq, "(batch, q_heads, q_len, qk_dim)") ||
            check_shape(&k, "k", 4, wk, "(batch, kv_heads, kv_len, qk_dim)") ||
            check_shape(&v, "v", 4, wv, "(batch, kv_heads, kv_len, v_dim)") ||
            check_shape(&out, "out", 4, wo, "(batch, q_heads, q_len, v_dim)"))
            goto done;
        if (olens != Py_None) {
            if (acquire(olens, "kv_lens", 1, ELEM_I32, 0, 1, &lens))
                goto done;
            if (lens.shape[0] != B) {
                PyErr_Format(PyExc_ValueError, "kv_lens: %lld entries for a batch of %lld",
                             (long long)lens.shape[0], (long long)B);
                goto done;
            }
        }
        if (omask != Py_None && (acquire(omask, "mask", 4, ELEM_BOOL, 0, 0, &mask) ||
                                 check_shape(&mask, "mask", 4, wm,
                                             "(batch, q_heads, q_len, kv_len)")))
            goto done;
        if (obias != Py_None && (acquire(obias, "bias", 4, ELEM_F32, 0, 0, &bias) ||
                                 check_shape(&bias, "bias", 4, wm,
                                             "(batch, q_heads, q_len, kv_len)")))
            goto done;
        if (weights_mode == 1 && (acquire(ow, "weights", 4, ELEM_F32, 1, 1, &w) ||
                                  check_shape(&w, "weights", 4, wm,
                                              "(batch, q_heads, q_len, kv_len)")))
            goto done;
        if (weights_mode == 2 && (acquire(ow, "weights", 3, ELEM_F32, 1, 1, &w) ||
                                  check_shape(&w, "weights", 3, wmean, "(batch, q_len, kv_len)")))
            goto done;
        if (olse != Py_None && (acquire(olse, "lse", 3, ELEM_F32, 1, 1, &lse) ||
                                check_shape(&lse, "lse", 3, wl, "(batch, q_heads, q_len)")))
            goto done;
        if (oent != Py_None && (acquire(oent, "entropy", 3, ELEM_F32, 1, 1, &ent) ||
                                check_shape(&ent, "entropy", 3, wl, "(batch, q_heads, q_len)")))
            goto done;
    }

    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B;
    a.q_len = (uint32_t)Lq;
    a.kv_len = (uint32_t)Lk;
    a.q = q.view.buf;
    a.q_strides = strides_of(&q);
    a.k = k.view.buf;
    a.k_strides = strides_of(&k);
    a.v = v.view.buf;
    a.v_strides = strides_of(&v);
    a.out = out.view.buf;
    a.out_strides = strides_of(&out);
    a.q_offset = q_offset;
    a.kv_lens = lens.held ? lens.view.buf : NULL;
    a.mask = mask.held ? mask.view.buf : NULL;
    a.mask_strides = strides_of(&mask);
    a.bias = bias.held ? bias.view.buf : NULL;
    a.bias_strides = strides_of(&bias);
    a.weights_mode = (attn_weights_mode)weights_mode;
    a.weights = w.held ? w.view.buf : NULL;
    a.lse = lse.held ? lse.view.buf : NULL;
    a.entropy = ent.held ? ent.view.buf : NULL;
    a.dropout_seed = seed;
    a.dropout_offset = dropout_offset;

    /* The buffers stay acquired (their exporters cannot resize or free them) while the GIL is
     * released; the lock keeps other threads off the context and its error text. */
    attn_status st = ATTN_OK;
    take_lock(self->lock);
    if (!self->ctx) {
        PyThread_release_lock(self->lock);
        PyErr_SetString(PyExc_ValueError, "the Context is closed");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    st = attn_forward(self->ctx, &a);
    Py_END_ALLOW_THREADS
    if (st != ATTN_OK)
        raise_status(st, attn_last_error(self->ctx));
    PyThread_release_lock(self->lock);
    if (st == ATTN_OK) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
done:
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        release(all[i]);
    return result;
}

/*
 * backward(q, k, v, out, dout, lse, dq, dk, dv, q_offset=None, kv_lens=None, mask=None,
 *          bias=None, dbias=None, dropout_seed=0, dropout_offset=0)
 * q, k, v, mask, bias, kv_lens, q_offset: as for forward (k and v in the context's kv_dtype).
 * out, dout [B,Hq,Lq,Dv] float32 with a contiguous last axis; lse C-contiguous float32
 * [B,Hq,Lq]. dq, dk, dv (writable float32, shapes of q, k, v, contiguous last axis) are
 * overwritten. dbias: None, or (only with bias) a writable C-contiguous float32 array of the
 * bias's broadcast shape: size 1 along each axis on which the bias view has stride 0 (or size
 * 1), kv_len along the last. Returns None.
 */
static PyObject *context_backward(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"q", "k", "v", "out", "dout", "lse", "dq", "dk", "dv", "q_offset",
                            "kv_lens", "mask", "bias", "dbias", "dropout_seed",
                            "dropout_offset", NULL};
    PyObject *oq, *ok, *ov, *oout, *odout, *olse, *odq, *odk, *odv, *ooff = Py_None,
             *olens = Py_None, *omask = Py_None, *obias = Py_None, *odbias = Py_None,
             *oseed = NULL, *odoff = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOO|OOOOOOO:backward", names, &oq,
                                     &ok, &ov, &oout, &odout, &olse, &odq, &odk, &odv, &ooff,
                                     &olens, &omask, &obias, &odbias, &oseed, &odoff))
        return NULL;
    uint64_t seed = 0;
    uint32_t dropout_offset = 0;
    int64_t q_offset;
    if ((oseed && parse_u64(oseed, "dropout_seed", &seed)) ||
        (odoff && parse_u32(odoff, "dropout_offset", &dropout_offset)) ||
        parse_q_offset(ooff, &q_offset))
        return NULL;
    if (odbias != Py_None && obias == Py_None) {
        PyErr_SetString(PyExc_ValueError, "dbias given without bias");
        return NULL;
    }

    const attn_desc *d = &self->desc;
    tensor q, k, v, out, dout, lse, dq, dk, dv, lens, mask, bias, dbias;
    tensor *all[] = {&q, &k, &v, &out, &dout, &lse, &dq, &dk, &dv, &lens, &mask, &bias, &dbias};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        all[i]->held = 0;
    PyObject *result = NULL;

    if (acquire(oq, "q", 4, ELEM_F32, 0, 0, &q) || acquire(ok, "k", 4, kv_kind(d), 0, 0, &k) ||
        acquire(ov, "v", 4, kv_kind(d), 0, 0, &v) ||
        acquire(oout, "out", 4, ELEM_F32, 0, 0, &out) ||
        acquire(odout, "dout", 4, ELEM_F32, 0, 0, &dout) ||
        acquire(olse, "lse", 3, ELEM_F32, 0, 1, &lse) ||
        acquire(odq, "dq", 4, ELEM_F32, 1, 0, &dq) || acquire(odk, "dk", 4, ELEM_F32, 1, 0, &dk) ||
        acquire(odv, "dv", 4, ELEM_F32, 1, 0, &dv))
        goto done;
    int64_t B = q.shape[0], Lq = q.shape[2], Lk = k.shape[2];
    if (B > UINT32_MAX || Lq > UINT32_MAX || Lk > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "batch, q_len and kv_len must each fit 32 bits");
        goto done;
    }
    {
        const int64_t wq[4] = {B, d->q_heads, Lq, d->qk_dim};
        const int64_t wk[4] = {B, d->kv_heads, Lk, d->qk_dim};
        const int64_t wv[4] = {B, d->kv_heads, Lk, d->v_dim};
        const int64_t wo[4] = {B, d->q_heads, Lq, d->v_dim};
        const int64_t wm[4] = {B, d->q_heads, Lq, Lk};
        const int64_t wl[3] = {B, d->q_heads, Lq};
        if (check_shape(&q, "q", 4, wq, "(batch, q_heads, q_len, qk_dim)") ||
            check_shape(&k, "k", 4, wk, "(batch, kv_heads, kv_len, qk_dim)") ||
            check_shape(&v, "v", 4, wv, "(batch, kv_heads, kv_len, v_dim)") ||
            check_shape(&out, "out", 4, wo, "(batch, q_heads, q_len, v_dim)") ||
            check_shape(&dout, "dout", 4, wo, "(batch, q_heads, q_len, v_dim)") ||
            check_shape(&lse, "lse", 3, wl, "(batch, q_heads, q_len)") ||
            check_shape(&dq, "dq", 4, wq, "(batch, q_heads, q_len, qk_dim)") ||
            check_shape(&dk, "dk", 4, wk, "(batch, kv_heads, kv_len, qk_dim)") ||
            check_shape(&dv, "dv", 4, wv, "(batch, kv_heads, kv_len, v_dim)"))
            goto done;
        if (olens != Py_None) {
            if (acquire(olens, "kv_lens", 1, ELEM_I32, 0, 1, &lens))
                goto done;
            if (lens.shape[0] != B) {
                PyErr_Format(PyExc_ValueError, "kv_lens: %lld entries for a batch of %lld",
                             (long long)lens.shape[0], (long long)B);
                goto done;
            }
        }
        if (omask != Py_None && (acquire(omask, "mask", 4, ELEM_BOOL, 0, 0, &mask) ||
                                 check_shape(&mask, "mask", 4, wm,
                                             "(batch, q_heads, q_len, kv_len)")))
            goto done;
        if (obias != Py_None && (acquire(obias, "bias", 4, ELEM_F32, 0, 0, &bias) ||
                                 check_shape(&bias, "bias", 4, wm,
                                             "(batch, q_heads, q_len, kv_len)")))
            goto done;
        if (odbias != Py_None) {
            int64_t wdb[4];
            for (int i = 0; i < 3; i++)
                wdb[i] = bias.strides[i] == 0 ? 1 : wm[i];
            wdb[3] = Lk;
            if (acquire(odbias, "dbias", 4, ELEM_F32, 1, 1, &dbias) ||
                check_shape(&dbias, "dbias", 4, wdb, "the bias's broadcast shape"))
                goto done;
        }
    }

    attn_backward_args a;
    attn_backward_args_init(&a);
    a.batch = (uint32_t)B;
    a.q_len = (uint32_t)Lq;
    a.kv_len = (uint32_t)Lk;
    a.q = q.view.buf;
    a.q_strides = strides_of(&q);
    a.k = k.view.buf;
    a.k_strides = strides_of(&k);
    a.v = v.view.buf;
    a.v_strides = strides_of(&v);
    a.out = out.view.buf;
    a.out_strides = strides_of(&out);
    a.dout = dout.view.buf;
    a.dout_strides = strides_of(&dout);
    a.lse = lse.view.buf; /* C-contiguous: strides {0, 0, 0} */
    a.q_offset = q_offset;
    a.kv_lens = lens.held ? lens.view.buf : NULL;
    a.mask = mask.held ? mask.view.buf : NULL;
    a.mask_strides = strides_of(&mask);
    a.bias = bias.held ? bias.view.buf : NULL;
    a.bias_strides = strides_of(&bias);
    a.dq = dq.view.buf;
    a.dq_strides = strides_of(&dq);
    a.dk = dk.view.buf;
    a.dk_strides = strides_of(&dk);
    a.dv = dv.view.buf;
    a.dv_strides = strides_of(&dv);
    a.dbias = dbias.held ? dbias.view.buf : NULL; /* C-contiguous: strides {0, 0, 0} */
    a.dropout_seed = seed;
    a.dropout_offset = dropout_offset;

    attn_status st = ATTN_OK;
    take_lock(self->lock);
    if (!self->ctx) {
        PyThread_release_lock(self->lock);
        PyErr_SetString(PyExc_ValueError, "the Context is closed");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    st = attn_backward(self->ctx, &a);
    Py_END_ALLOW_THREADS
    if (st != ATTN_OK)
        raise_status(st, attn_last_error(self->ctx));
    PyThread_release_lock(self->lock);
    if (st == ATTN_OK) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
done:
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        release(all[i]);
    return result;
}

/*
 * forward_cache(q, cache, seq_ids, out, q_offset=None, kv_len=0, mask=None, bias=None,
 *               weights_mode=0, weights=None, lse=None, entropy=None, dropout_seed=0,
 *               dropout_offset=0)
 * attn_forward_cache: q [B,Hq,Lq,Dk] and out [B,Hq,Lq,Dv] as for forward; cache a KVCache;
 * seq_ids C-contiguous uint32 [B]; kv_len 0 = the longest chosen sequence. mask, bias and
 * weights have kv_len (or that longest length) keys. Returns None.
 */
static PyObject *context_forward_cache(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"q", "cache", "seq_ids", "out", "q_offset", "kv_len", "mask", "bias",
                            "weights_mode", "weights", "lse", "entropy", "dropout_seed",
                            "dropout_offset", NULL};
    PyObject *oq, *ocache, *oids, *oout, *ooff = Py_None, *okvlen = NULL, *omask = Py_None,
             *obias = Py_None, *ow = Py_None, *olse = Py_None, *oent = Py_None,
             *oseed = NULL, *odoff = NULL;
    int weights_mode = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!OO|OOOOiOOOOO:forward_cache", names, &oq,
                                     &KVCacheType, &ocache, &oids, &oout, &ooff, &okvlen, &omask,
                                     &obias, &weights_mode, &ow, &olse, &oent, &oseed, &odoff))
        return NULL;
    KVCacheObject *cache = (KVCacheObject *)ocache;
    uint64_t seed = 0;
    uint32_t dropout_offset = 0, kv_len = 0;
    int64_t q_offset;
    if ((oseed && parse_u64(oseed, "dropout_seed", &seed)) ||
        (odoff && parse_u32(odoff, "dropout_offset", &dropout_offset)) ||
        (okvlen && okvlen != Py_None && parse_u32(okvlen, "kv_len", &kv_len)) ||
        parse_q_offset(ooff, &q_offset))
        return NULL;
    if (weights_mode < 0 || weights_mode > 2) {
        PyErr_Format(PyExc_ValueError, "weights_mode = %d is not 0, 1 or 2", weights_mode);
        return NULL;
    }
    if ((weights_mode == 0) != (ow == Py_None)) {
        PyErr_SetString(PyExc_ValueError, weights_mode ? "weights_mode asks for weights but "
                                                         "weights is None"
                                                       : "weights given with weights_mode 0");
        return NULL;
    }

    const attn_desc *d = &self->desc;
    tensor q, ids, out, mask, bias, w, lse, ent;
    tensor *all[] = {&q, &ids, &out, &mask, &bias, &w, &lse, &ent};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        all[i]->held = 0;
    PyObject *result = NULL;
    if (acquire(oq, "q", 4, ELEM_F32, 0, 0, &q) ||
        acquire(oids, "seq_ids", 1, ELEM_U32, 0, 1, &ids) ||
        acquire(oout, "out", 4, ELEM_F32, 1, 0, &out))
        goto done;
    int64_t B = q.shape[0], Lq = q.shape[2];
    if (B > UINT32_MAX || Lq > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "batch and q_len must each fit 32 bits");
        goto done;
    }
    if (ids.shape[0] != B) {
        PyErr_Format(PyExc_ValueError, "seq_ids: %lld entries for a batch of %lld",
                     (long long)ids.shape[0], (long long)B);
        goto done;
    }
    {
        const int64_t wq[4] = {B, d->q_heads, Lq, d->qk_dim};
        const int64_t wo[4] = {B, d->q_heads, Lq, d->v_dim};
        if (check_shape(&q, "q", 4, wq, "(batch, q_heads, q_len, qk_dim)") ||
            check_shape(&out, "out", 4, wo, "(batch, q_heads, q_len, v_dim)"))
            goto done;
        if (omask != Py_None && acquire(omask, "mask", 4, ELEM_BOOL, 0, 0, &mask))
            goto done;
        if (obias != Py_None && acquire(obias, "bias", 4, ELEM_F32, 0, 0, &bias))
            goto done;
        if (weights_mode && acquire(ow, "weights", weights_mode == 1 ? 4 : 3, ELEM_F32, 1, 1, &w))
            goto done;
        const int64_t wl[3] = {B, d->q_heads, Lq};
        if (olse != Py_None && (acquire(olse, "lse", 3, ELEM_F32, 1, 1, &lse) ||
                                check_shape(&lse, "lse", 3, wl, "(batch, q_heads, q_len)")))
            goto done;
        if (oent != Py_None && (acquire(oent, "entropy", 3, ELEM_F32, 1, 1, &ent) ||
                                check_shape(&ent, "entropy", 3, wl, "(batch, q_heads, q_len)")))
            goto done;
    }

    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B;
    a.q_len = (uint32_t)Lq;
    a.kv_len = kv_len;
    a.q = q.view.buf;
    a.q_strides = strides_of(&q);
    a.out = out.view.buf;
    a.out_strides = strides_of(&out);
    a.q_offset = q_offset;
    a.mask = mask.held ? mask.view.buf : NULL;
    a.mask_strides = strides_of(&mask);
    a.bias = bias.held ? bias.view.buf : NULL;
    a.bias_strides = strides_of(&bias);
    a.weights_mode = (attn_weights_mode)weights_mode;
    a.weights = w.held ? w.view.buf : NULL;
    a.lse = lse.held ? lse.view.buf : NULL;
    a.entropy = ent.held ? ent.view.buf : NULL;
    a.dropout_seed = seed;
    a.dropout_offset = dropout_offset;
    const uint32_t *seq_ids = ids.view.buf;

    /* The context's lock, then the cache's (calls that change a cache take only the latter):
     * the key extent of mask, bias and weights is checked against the lengths the call sees. */
    take_lock(self->lock);
    if (!self->ctx) {
        PyThread_release_lock(self->lock);
        PyErr_SetString(PyExc_ValueError, "the Context is closed");
        goto done;
    }
    if (kvcache_enter(cache)) {
        PyThread_release_lock(self->lock);
        goto done;
    }
    int64_t longest = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t n = attn_kv_cache_len(cache->cache, seq_ids[b]); /* -1: libattn names the id */
        longest = n > longest ? n : longest;
    }
    int64_t extent = kv_len ? (int64_t)kv_len : longest;
    const int64_t wm[4] = {B, d->q_heads, Lq, extent};
    const int64_t wmean[3] = {B, Lq, extent};
    attn_status st = ATTN_OK;
    int bad = (mask.held && check_shape(&mask, "mask", 4, wm, "(batch, q_heads, q_len, kv_len)")) ||
              (bias.held && check_shape(&bias, "bias", 4, wm, "(batch, q_heads, q_len, kv_len)")) ||
              (weights_mode == 1 &&
               check_shape(&w, "weights", 4, wm, "(batch, q_heads, q_len, kv_len)")) ||
              (weights_mode == 2 && check_shape(&w, "weights", 3, wmean, "(batch, q_len, kv_len)"));
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS
        st = attn_forward_cache(self->ctx, &a, cache->cache, seq_ids);
        Py_END_ALLOW_THREADS
        if (st != ATTN_OK)
            raise_status(st, attn_last_error(self->ctx));
    }
    PyThread_release_lock(cache->lock);
    PyThread_release_lock(self->lock);
    if (!bad && st == ATTN_OK) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
done:
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        release(all[i]);
    return result;
}

/* close(): destroys the C context now (waiting for a call in progress); later calls raise. */
static PyObject *context_close(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (self->ctx) {
        take_lock(self->lock);
        attn_ctx *ctx = self->ctx;
        self->ctx = NULL;
        PyThread_release_lock(self->lock);
        attn_destroy(ctx);
    }
    Py_RETURN_NONE;
}

static PyObject *context_get_closed(ContextObject *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(self->ctx == NULL);
}

static PyMethodDef context_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))context_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(q, k, v, out, q_offset=None, kv_lens=None, mask=None, bias=None, weights_mode=0, "
     "weights=None, lse=None, entropy=None, dropout_seed=0, dropout_offset=0)\n\nOne "
     "attn_forward call on buffers in [batch, head, seq, feature] order; outputs are written "
     "in place."},
    {"backward", (PyCFunction)(void (*)(void))context_backward, METH_VARARGS | METH_KEYWORDS,
     "backward(q, k, v, out, dout, lse, dq, dk, dv, q_offset=None, kv_lens=None, mask=None, "
     "bias=None, dbias=None, dropout_seed=0, dropout_offset=0)\n\nOne attn_backward call; "
     "dq, dk, dv (and dbias) are written in place."},
    {"forward_cache", (PyCFunction)(void (*)(void))context_forward_cache,
     METH_VARARGS | METH_KEYWORDS,
     "forward_cache(q, cache, seq_ids, out, q_offset=None, kv_len=0, mask=None, bias=None, "
     "weights_mode=0, weights=None, lse=None, entropy=None, dropout_seed=0, "
     "dropout_offset=0)\n\nOne attn_forward_cache call over the sequences seq_ids (uint32) of "
     "a KVCache; outputs are written in place."},
    {"close", (PyCFunction)context_close, METH_NOARGS,
     "close()\n\nReleases the C context; later calls raise ValueError."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef context_getset[] = {
    {"closed", (getter)context_get_closed, NULL, "True after close()", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ContextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "attn._attn.Context",
    .tp_basicsize = sizeof(ContextObject),
    .tp_dealloc = (destructor)context_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Context(q_heads, kv_heads, qk_dim, v_dim, scale, causal, window_left, "
              "window_right, masked_rows, threads, ops=0, dropout=0.0, kv_dtype=0)\n\nAn "
              "attn_ctx: libattn's descriptor fields, with libattn's encodings.",
    .tp_methods = context_methods,
    .tp_getset = context_getset,
    .tp_init = (initproc)context_init,
    .tp_new = PyType_GenericNew,
};

/* ---- multi-head attention layer ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    attn_mha *mha;
    int64_t E, H, kvE, kdim, vdim;
    int bias;
    PyThread_type_lock lock; /* held during a call: one thread at a time uses the layer */
} MHAObject;

static void mha_dealloc(MHAObject *self)
{
    attn_mha_destroy(self->mha); /* no call can be running: a call holds a reference to self */
    if (self->lock)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* MHA(embed_dim, heads, kv_heads, kdim, vdim, bias, causal, masked_rows, dropout, threads):
 * libattn's attn_mha_desc fields with its encodings (kv_heads, kdim, vdim 0 = the defaults). */
static int mha_init(MHAObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"embed_dim", "heads", "kv_heads", "kdim", "vdim", "bias", "causal",
                            "masked_rows", "dropout", "threads", NULL};
    PyObject *oe, *oh, *okvh, *okd, *ovd, *omr, *oth;
    int bias, causal;
    double dropout;
    if (self->mha) {
        PyErr_SetString(PyExc_RuntimeError, "MHA is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOppOdO:MHA", names, &oe, &oh, &okvh,
                                     &okd, &ovd, &bias, &causal, &omr, &dropout, &oth))
        return -1;
    attn_mha_desc d;
    attn_mha_desc_init(&d);
    uint32_t masked_rows;
    if (parse_u32(oe, "embed_dim", &d.embed_dim) || parse_u32(oh, "heads", &d.heads) ||
        parse_u32(okvh, "kv_heads", &d.kv_heads) || parse_u32(okd, "kdim", &d.kdim) ||
        parse_u32(ovd, "vdim", &d.vdim) || parse_u32(omr, "masked_rows", &masked_rows) ||
        parse_u32(oth, "threads", &d.threads))
        return -1;
    d.bias = bias ? 1 : 0;
    d.flags = causal ? ATTN_CAUSAL : 0;
    d.masked_rows = masked_rows; /* libattn checks the value */
    d.dropout = (float)dropout;  /* libattn checks the range (a NaN stays NaN) */
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    attn_mha *mha = NULL;
    attn_status st;
    const char *msg;
    Py_BEGIN_ALLOW_THREADS
    st = attn_mha_create(&d, &mha);
    msg = st == ATTN_OK ? "" : attn_mha_last_error(NULL); /* thread-local: same thread */
    Py_END_ALLOW_THREADS
    if (st != ATTN_OK) {
        raise_status(st, msg);
        return -1;
    }
    self->mha = mha;
    self->E = d.embed_dim;
    self->H = d.heads;
    self->kvE = (int64_t)(d.kv_heads ? d.kv_heads : d.heads) * (d.embed_dim / d.heads);
    self->kdim = d.kdim ? d.kdim : d.embed_dim;
    self->vdim = d.vdim ? d.vdim : d.embed_dim;
    self->bias = d.bias;
    return 0;
}

/* activation_size(batch, q_len, kv_len) or, with `saved`, saved_size(...). */
static PyObject *mha_size(MHAObject *self, PyObject *args, int saved)
{
    PyObject *ob, *oq, *ok;
    uint32_t b, lq, lk;
    if (!PyArg_ParseTuple(args, saved ? "OOO:saved_size" : "OOO:activation_size", &ob, &oq, &ok) ||
        parse_u32(ob, "batch", &b) || parse_u32(oq, "q_len", &lq) || parse_u32(ok, "kv_len", &lk))
        return NULL;
    if (!self->mha) {
        PyErr_SetString(PyExc_ValueError, "the layer is closed");
        return NULL;
    }
    size_t n = saved ? attn_mha_saved_size(self->mha, b, lq, lk)
                     : attn_mha_activation_size(self->mha, b, lq, lk);
    return PyLong_FromSize_t(n);
}

static PyObject *mha_activation_size(MHAObject *self, PyObject *args)
{
    return mha_size(self, args, 0);
}

static PyObject *mha_saved_size(MHAObject *self, PyObject *args)
{
    return mha_size(self, args, 1);
}

/* The buffers of one call, acquired from a dict of named objects (absent or None: NULL). */
enum { MHA_QUERY, MHA_KEY, MHA_VALUE, MHA_OUT, MHA_IPW, MHA_QPW, MHA_KPW, MHA_VPW, MHA_IPB,
       MHA_OPW, MHA_OPB, MHA_KV_LENS, MHA_KEY_VISIBLE, MHA_ATTN_MASK, MHA_ATTN_BIAS,
       MHA_WEIGHTS, MHA_ACT, MHA_SAVED, MHA_DOUT, MHA_DQUERY, MHA_DKEY, MHA_DVALUE, MHA_DIPW,
       MHA_DQPW, MHA_DKPW, MHA_DVPW, MHA_DIPB, MHA_DOPW, MHA_DOPB, MHA_N };

static const char *const mha_names[MHA_N] = {
    "query", "key", "value", "out", "in_proj_weight", "q_proj_weight", "k_proj_weight",
    "v_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias", "kv_lens",
    "key_visible", "attn_mask", "attn_bias", "weights", "activations", "saved", "dout",
    "d_query", "d_key", "d_value", "d_in_proj_weight", "d_q_proj_weight", "d_k_proj_weight",
    "d_v_proj_weight", "d_in_proj_bias", "d_out_proj_weight", "d_out_proj_bias"};

typedef struct mha_call {
    tensor t[MHA_N];
    void *p[MHA_N]; /* buffer or NULL */
    attn_mha_args a;
    attn_mha_grads g;
} mha_call;

static void mha_call_release(mha_call *c)
{
    for (int i = 0; i < MHA_N; i++)
        release(&c->t[i]);
}

/* Acquires item `i` of dict `d` (C-contiguous, the given dims and kind) if present. A shared
 * buffer: the same object under another name is acquired again (both views stay valid). */
static int mha_get(mha_call *c, PyObject *d, int i, int ndim, enum elem_kind kind, int writable,
                   const int64_t *want)
{
    PyObject *o = PyDict_GetItemString(d, mha_names[i]); /* borrowed */
    if (!o || o == Py_None)
        return 0;
    if (acquire(o, mha_names[i], ndim, kind, writable, 1, &c->t[i]))
        return -1;
    if (want) {
        for (int k = 0; k < ndim; k++)
            if (c->t[i].shape[k] != want[k]) {
                char buf[160] = "", *p = buf;
                for (int j = 0; j < ndim; j++)
                    p += snprintf(p, sizeof buf - (size_t)(p - buf), "%s%lld", j ? ", " : "",
                                  (long long)want[j]);
                PyErr_Format(PyExc_ValueError, "%s: shape does not match (%s)", mha_names[i],
                             buf);
                return -1;
            }
    }
    c->p[i] = c->t[i].view.buf;
    return 0;
}

/* A 1-D byte buffer (activations, saved) of at least `need` bytes. */
static int mha_get_bytes(mha_call *c, PyObject *d, int i, size_t need)
{
    if (mha_get(c, d, i, 1, ELEM_BOOL, 1, NULL))
        return -1;
    if (c->p[i] && (size_t)c->t[i].view.len < need) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, the call needs %zu", mha_names[i],
                     c->t[i].view.len, need);
        return -1;
    }
    return 0;
}

/*
 * Reads the call dict: batch, q_len, kv_len, mask_shape (0: [Lq, Lk], 1: [B*H, Lq, Lk]),
 * weights_mode, dropout_seed, dropout_offset (ints) and the buffers by their attn_mha_args
 * names, each C-contiguous in its documented shape (activations and saved: 1-D uint8 of at
 * least the size queries' bytes). `backward` adds dout and the gradients by their
 * attn_mha_grads names, and the int `mode`.
 */
static int mha_load(MHAObject *self, PyObject *d, int backward, mha_call *c)
{
    memset(c, 0, sizeof *c);
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_ValueError, "the call must be a dict");
        return -1;
    }
    uint32_t B, Lq, Lk, mask_shape = 0, weights_mode = 0, doff = 0, mode = 0;
    uint64_t seed = 0;
    static const char *const ints[] = {"batch", "q_len", "kv_len", "mask_shape",
                                       "weights_mode", "dropout_offset", "mode"};
    uint32_t *iv[] = {&B, &Lq, &Lk, &mask_shape, &weights_mode, &doff, &mode};
    for (int i = 0; i < 7; i++) {
        PyObject *o = PyDict_GetItemString(d, ints[i]);
        if (!o) {
            if (i < 3) {
                PyErr_Format(PyExc_ValueError, "the call has no %s", ints[i]);
                return -1;
            }
            continue;
        }
        if (parse_u32(o, ints[i], iv[i]))
            return -1;
    }
    PyObject *os = PyDict_GetItemString(d, "dropout_seed");
    if (os && parse_u64(os, "dropout_seed", &seed))
        return -1;
    if (mask_shape > 1 || weights_mode > 2) {
        PyErr_SetString(PyExc_ValueError, "mask_shape must be 0 or 1, weights_mode 0, 1 or 2");
        return -1;
    }
    int64_t E = self->E, H = self->H, kvE = self->kvE, kd = self->kdim, vd = self->vdim;
    int64_t b = B, lq = Lq, lk = Lk, Etot = E + 2 * kvE;
    const int64_t sq[3] = {b, lq, E}, sk[3] = {b, lk, kd}, sv[3] = {b, lk, vd};
    const int64_t w_in[2] = {Etot, E}, w_q[2] = {E, E}, w_k[2] = {kvE, kd}, w_v[2] = {kvE, vd};
    const int64_t b_in[1] = {Etot}, b_out[1] = {E}, s_lens[1] = {b}, s_kvis[2] = {b, lk};
    const int64_t m2[2] = {lq, lk}, m3[3] = {b * H, lq, lk};
    const int64_t wh[4] = {b, H, lq, lk}, wm[3] = {b, lq, lk};
    int mnd = mask_shape ? 3 : 2;
    const int64_t *ms = mask_shape ? m3 : m2;
    if (mha_get(c, d, MHA_QUERY, 3, ELEM_F32, 0, sq) || mha_get(c, d, MHA_KEY, 3, ELEM_F32, 0, sk) ||
        mha_get(c, d, MHA_VALUE, 3, ELEM_F32, 0, sv) ||
        (!backward && mha_get(c, d, MHA_OUT, 3, ELEM_F32, 1, sq)) ||
        mha_get(c, d, MHA_IPW, 2, ELEM_F32, 0, w_in) || mha_get(c, d, MHA_QPW, 2, ELEM_F32, 0, w_q) ||
        mha_get(c, d, MHA_KPW, 2, ELEM_F32, 0, w_k) || mha_get(c, d, MHA_VPW, 2, ELEM_F32, 0, w_v) ||
        mha_get(c, d, MHA_IPB, 1, ELEM_F32, 0, b_in) ||
        mha_get(c, d, MHA_OPW, 2, ELEM_F32, 0, w_q) || mha_get(c, d, MHA_OPB, 1, ELEM_F32, 0, b_out) ||
        mha_get(c, d, MHA_KV_LENS, 1, ELEM_I32, 0, s_lens) ||
        mha_get(c, d, MHA_KEY_VISIBLE, 2, ELEM_BOOL, 0, s_kvis) ||
        mha_get(c, d, MHA_ATTN_MASK, mnd, ELEM_BOOL, 0, ms) ||
        mha_get(c, d, MHA_ATTN_BIAS, mnd, ELEM_F32, 0, ms) ||
        (!backward && weights_mode == 1 && mha_get(c, d, MHA_WEIGHTS, 4, ELEM_F32, 1, wh)) ||
        (!backward && weights_mode == 2 && mha_get(c, d, MHA_WEIGHTS, 3, ELEM_F32, 1, wm)))
        return -1;
    if (!backward && weights_mode == 0 && PyDict_GetItemString(d, "weights") &&
        PyDict_GetItemString(d, "weights") != Py_None) {
        PyErr_SetString(PyExc_ValueError, "weights given with weights_mode 0");
        return -1;
    }
    /* the byte buffers: sizes from libattn (0 = the sizes do not fit; libattn then refuses) */
    size_t na = attn_mha_activation_size(self->mha, B, Lq, Lk);
    size_t ns = attn_mha_saved_size(self->mha, B, Lq, Lk);
    if (mha_get_bytes(c, d, MHA_ACT, na) || mha_get_bytes(c, d, MHA_SAVED, ns))
        return -1;
    if (backward) {
        if (mha_get(c, d, MHA_DOUT, 3, ELEM_F32, 0, sq) ||
            mha_get(c, d, MHA_DQUERY, 3, ELEM_F32, 1, sq) ||
            mha_get(c, d, MHA_DKEY, 3, ELEM_F32, 1, sk) ||
            mha_get(c, d, MHA_DVALUE, 3, ELEM_F32, 1, sv) ||
            mha_get(c, d, MHA_DIPW, 2, ELEM_F32, 1, w_in) ||
            mha_get(c, d, MHA_DQPW, 2, ELEM_F32, 1, w_q) ||
            mha_get(c, d, MHA_DKPW, 2, ELEM_F32, 1, w_k) ||
            mha_get(c, d, MHA_DVPW, 2, ELEM_F32, 1, w_v) ||
            mha_get(c, d, MHA_DIPB, 1, ELEM_F32, 1, b_in) ||
            mha_get(c, d, MHA_DOPW, 2, ELEM_F32, 1, w_q) ||
            mha_get(c, d, MHA_DOPB, 1, ELEM_F32, 1, b_out))
            return -1;
    }
    attn_mha_args *a = &c->a;
    attn_mha_args_init(a);
    a->batch = B, a->q_len = Lq, a->kv_len = Lk;
    a->query = c->p[MHA_QUERY], a->key = c->p[MHA_KEY], a->value = c->p[MHA_VALUE];
    a->out = c->p[MHA_OUT];
    a->in_proj_weight = c->p[MHA_IPW], a->q_proj_weight = c->p[MHA_QPW];
    a->k_proj_weight = c->p[MHA_KPW], a->v_proj_weight = c->p[MHA_VPW];
    a->in_proj_bias = c->p[MHA_IPB];
    a->out_proj_weight = c->p[MHA_OPW], a->out_proj_bias = c->p[MHA_OPB];
    a->kv_lens = c->p[MHA_KV_LENS], a->key_visible = c->p[MHA_KEY_VISIBLE];
    a->mask_shape = mask_shape;
    a->attn_mask = c->p[MHA_ATTN_MASK], a->attn_bias = c->p[MHA_ATTN_BIAS];
    a->weights_mode = weights_mode, a->weights = c->p[MHA_WEIGHTS];
    a->activations = c->p[MHA_ACT];
    a->activation_size = c->p[MHA_ACT] ? (size_t)c->t[MHA_ACT].view.len : 0;
    a->saved = c->p[MHA_SAVED];
    a->saved_size = c->p[MHA_SAVED] ? (size_t)c->t[MHA_SAVED].view.len : 0;
    a->dropout_seed = seed, a->dropout_offset = doff;
    if (backward) {
        attn_mha_grads *g = &c->g;
        attn_mha_grads_init(g);
        g->mode = mode; /* libattn checks the value */
        g->dout = c->p[MHA_DOUT];
        g->d_query = c->p[MHA_DQUERY], g->d_key = c->p[MHA_DKEY], g->d_value = c->p[MHA_DVALUE];
        g->d_in_proj_weight = c->p[MHA_DIPW], g->d_q_proj_weight = c->p[MHA_DQPW];
        g->d_k_proj_weight = c->p[MHA_DKPW], g->d_v_proj_weight = c->p[MHA_DVPW];
        g->d_in_proj_bias = c->p[MHA_DIPB];
        g->d_out_proj_weight = c->p[MHA_DOPW], g->d_out_proj_bias = c->p[MHA_DOPB];
    }
    return 0;
}

static PyObject *mha_run(MHAObject *self, PyObject *args, int backward)
{
    PyObject *d;
    if (!PyArg_ParseTuple(args, backward ? "O:backward" : "O:forward", &d))
        return NULL;
    mha_call *c = PyMem_Calloc(1, sizeof *c);
    if (!c)
        return PyErr_NoMemory();
    PyObject *result = NULL;
    if (mha_load(self, d, backward, c))
        goto done;
    take_lock(self->lock);
    if (!self->mha) {
        PyThread_release_lock(self->lock);
        PyErr_SetString(PyExc_ValueError, "the layer is closed");
        goto done;
    }
    attn_status st;
    Py_BEGIN_ALLOW_THREADS
    st = backward ? attn_mha_backward(self->mha, &c->a, &c->g) : attn_mha_forward(self->mha, &c->a);
    Py_END_ALLOW_THREADS
    if (st != ATTN_OK)
        raise_status(st, attn_mha_last_error(self->mha));
    PyThread_release_lock(self->lock);
    if (st == ATTN_OK) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
done:
    mha_call_release(c);
    PyMem_Free(c);
    return result;
}

static PyObject *mha_forward(MHAObject *self, PyObject *args)
{
    return mha_run(self, args, 0);
}

static PyObject *mha_backward(MHAObject *self, PyObject *args)
{
    return mha_run(self, args, 1);
}

static PyObject *mha_close(MHAObject *self, PyObject *unused)
{
    (void)unused;
    if (self->mha) {
        take_lock(self->lock);
        attn_mha *m = self->mha;
        self->mha = NULL;
        PyThread_release_lock(self->lock);
        attn_mha_destroy(m);
    }
    Py_RETURN_NONE;
}

static PyObject *mha_get_closed(MHAObject *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(self->mha == NULL);
}

static PyMethodDef mha_methods[] = {
    {"forward", (PyCFunction)mha_forward, METH_VARARGS,
     "forward(call)\n\nOne attn_mha_forward call; `call` is a dict of attn_mha_args fields "
     "(buffers C-contiguous in their documented shapes)."},
    {"backward", (PyCFunction)mha_backward, METH_VARARGS,
     "backward(call)\n\nOne attn_mha_backward call; `call` also holds dout, the gradients by "
     "their attn_mha_grads names and the int mode."},
    {"activation_size", (PyCFunction)mha_activation_size, METH_VARARGS,
     "activation_size(batch, q_len, kv_len) -> attn_mha_activation_size"},
    {"saved_size", (PyCFunction)mha_saved_size, METH_VARARGS,
     "saved_size(batch, q_len, kv_len) -> attn_mha_saved_size"},
    {"close", (PyCFunction)mha_close, METH_NOARGS,
     "close()\n\nReleases the layer; later calls raise ValueError."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef mha_getset[] = {
    {"closed", (getter)mha_get_closed, NULL, "True after close()", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject MHAType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "attn._attn.MHA",
    .tp_basicsize = sizeof(MHAObject),
    .tp_dealloc = (destructor)mha_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "MHA(embed_dim, heads, kv_heads, kdim, vdim, bias, causal, masked_rows, dropout, "
              "threads)\n\nAn attn_mha layer: libattn's descriptor fields, with libattn's "
              "encodings.",
    .tp_methods = mha_methods,
    .tp_getset = mha_getset,
    .tp_init = (initproc)mha_init,
    .tp_new = PyType_GenericNew,
};

/* ---- module -------------------------------------------------------------------------------- */

static PyObject *module_kernel_isa(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyUnicode_FromString(attn_kernel_isa());
}

/* _error(status, message): the exception forward() would raise for that libattn status (for
 * the tests of the status -> exception mapping; statuses like ATTN_ERR_NO_MEMORY cannot be
 * provoked reliably). */
static PyObject *module_error(PyObject *self, PyObject *args)
{
    (void)self;
    int st;
    const char *message;
    if (!PyArg_ParseTuple(args, "is:_error", &st, &message))
        return NULL;
    raise_status((attn_status)st, message);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* dropout_mask(p, seed, offset, q_heads, batch_index, head, row0, rows, col0, cols, keep, ld):
 * attn_dropout_mask into `keep`, a writable C-contiguous uint8 buffer of at least
 * (rows - 1) * ld + cols bytes (checked here before libattn sees it). Returns None. */
static PyObject *module_dropout_mask(PyObject *self, PyObject *args)
{
    (void)self;
    double p;
    PyObject *oseed, *ooff, *oqh, *ob, *oh, *orow0, *orows, *ocol0, *ocols, *okeep, *old;
    if (!PyArg_ParseTuple(args, "dOOOOOOOOOOO:dropout_mask", &p, &oseed, &ooff, &oqh, &ob, &oh,
                          &orow0, &orows, &ocol0, &ocols, &okeep, &old))
        return NULL;
    uint64_t seed;
    uint32_t offset, q_heads, b, h;
    int64_t row0, rows, col0, cols, ld;
    if (parse_u64(oseed, "seed", &seed) || parse_u32(ooff, "offset", &offset) ||
        parse_u32(oqh, "q_heads", &q_heads) || parse_u32(ob, "batch", &b) ||
        parse_u32(oh, "head", &h) || parse_i64(orow0, "row0", &row0) ||
        parse_i64(orows, "rows", &rows) || parse_i64(ocol0, "col0", &col0) ||
        parse_i64(ocols, "cols", &cols) || parse_i64(old, "ld", &ld))
        return NULL;
    tensor keep;
    if (acquire(okeep, "keep", 1, ELEM_BOOL, 1, 1, &keep))
        return NULL;
    /* Only a call libattn would accept writes (rows and cols are at most 2^32 then): its
     * extent must fit the buffer. */
    const int64_t most = INT64_C(1) << 32;
    if (rows >= 1 && cols >= 1 && rows <= most && cols <= most && ld >= cols &&
        (rows - 1) <= (INT64_MAX - cols) / ld &&
        (rows - 1) * ld + cols > keep.shape[0]) {
        PyErr_Format(PyExc_ValueError, "keep: %lld bytes, the block needs %lld",
                     (long long)keep.shape[0], (long long)((rows - 1) * ld + cols));
        release(&keep);
        return NULL;
    }
    attn_status st;
    const char *msg;
    Py_BEGIN_ALLOW_THREADS
    st = attn_dropout_mask((float)p, seed, offset, q_heads, b, h, row0, rows, col0, cols,
                           keep.view.buf, ld);
    msg = st == ATTN_OK ? "" : attn_last_error(NULL);
    Py_END_ALLOW_THREADS
    release(&keep);
    if (st != ATTN_OK)
        return raise_status(st, msg);
    Py_RETURN_NONE;
}

/* merge(outs, lses, out, lse, masked_rows): attn_merge of the parts outs[i] (float32
 * [B,H,L,D], contiguous last axis) and lses[i] (C-contiguous float32 [B,H,L]) into out
 * (writable C-contiguous [B,H,L,D]) and lse (writable C-contiguous [B,H,L]). Returns None. */
static PyObject *module_merge(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *oouts, *olses, *oout, *olse;
    unsigned int masked_rows;
    if (!PyArg_ParseTuple(args, "OOOOI:merge", &oouts, &olses, &oout, &olse, &masked_rows))
        return NULL;
    if (!PyList_Check(oouts) || !PyList_Check(olses) ||
        PyList_GET_SIZE(oouts) != PyList_GET_SIZE(olses)) {
        PyErr_SetString(PyExc_ValueError, "outs and lses must be lists of the same length");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(oouts);
    if (n < 1 || n > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%zd parts: at least 1 is needed", n);
        return NULL;
    }
    /* Hold references to the items: the lists may change while buffers are acquired. */
    PyObject *items = PyTuple_New(2 * n);
    tensor *ts = PyMem_Calloc((size_t)(2 * n + 2), sizeof *ts);
    attn_merge_part *parts = PyMem_Calloc((size_t)n, sizeof *parts);
    PyObject *result = NULL;
    tensor *out = NULL, *lse = NULL;
    if (!items || !ts || !parts) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyList_GET_ITEM(oouts, i), *l = PyList_GET_ITEM(olses, i);
        Py_INCREF(o);
        Py_INCREF(l);
        PyTuple_SET_ITEM(items, 2 * i, o);
        PyTuple_SET_ITEM(items, 2 * i + 1, l);
    }
    out = &ts[2 * n];
    lse = &ts[2 * n + 1];
    if (acquire(oout, "out", 4, ELEM_F32, 1, 1, out) ||
        acquire(olse, "lse", 3, ELEM_F32, 1, 1, lse))
        goto done;
    const int64_t *w = out->shape;
    for (int i = 0; i < 4; i++)
        if (w[i] < 1 || w[i] > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "out: every size must be in [1, 2**32 - 1]");
            goto done;
        }
    if (check_shape(lse, "lse", 3, w, "out's (batch, heads, q_len)"))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        char name_o[48], name_l[48];
        snprintf(name_o, sizeof name_o, "outs[%zd]", i);
        snprintf(name_l, sizeof name_l, "lses[%zd]", i);
        tensor *to = &ts[2 * i], *tl = &ts[2 * i + 1];
        if (acquire(PyTuple_GET_ITEM(items, 2 * i), name_o, 4, ELEM_F32, 0, 0, to) ||
            check_shape(to, name_o, 4, w, "(batch, heads, q_len, v_dim) of the merge") ||
            acquire(PyTuple_GET_ITEM(items, 2 * i + 1), name_l, 3, ELEM_F32, 0, 1, tl) ||
            check_shape(tl, name_l, 3, w, "(batch, heads, q_len) of the merge"))
            goto done;
        parts[i].out = to->view.buf;
        parts[i].out_strides = strides_of(to);
        parts[i].lse = tl->view.buf; /* C-contiguous: strides {0, 0, 0} */
    }
    attn_merge_args a;
    attn_merge_args_init(&a);
    a.n_parts = (uint32_t)n;
    a.batch = (uint32_t)w[0];
    a.heads = (uint32_t)w[1];
    a.q_len = (uint32_t)w[2];
    a.v_dim = (uint32_t)w[3];
    a.masked_rows = masked_rows;
    a.parts = parts;
    a.out = out->view.buf; /* C-contiguous */
    a.lse = lse->view.buf;
    attn_status st;
    const char *msg;
    Py_BEGIN_ALLOW_THREADS
    st = attn_merge(&a);
    msg = st == ATTN_OK ? "" : attn_last_error(NULL);
    Py_END_ALLOW_THREADS
    if (st != ATTN_OK) {
        raise_status(st, msg);
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (ts)
        for (Py_ssize_t i = 0; i < 2 * n + 2; i++)
            release(&ts[i]);
    PyMem_Free(ts);
    PyMem_Free(parts);
    Py_XDECREF(items);
    return result;
}

static PyMethodDef module_methods[] = {
    {"_error", module_error, METH_VARARGS,
     "_error(status, message) -> the exception a call failing with that status raises"},
    {"dropout_mask", module_dropout_mask, METH_VARARGS,
     "dropout_mask(p, seed, offset, q_heads, batch, head, row0, rows, col0, cols, keep, ld)\n\n"
     "attn_dropout_mask into the uint8 buffer keep"},
    {"merge", module_merge, METH_VARARGS,
     "merge(outs, lses, out, lse, masked_rows)\n\nattn_merge of the parts into out and lse"},
    {"kernel_isa", module_kernel_isa, METH_NOARGS,
     "kernel_isa() -> 'scalar' | 'avx2' | 'avx512': the softmax kernel variant in use"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "attn._attn",
    .m_doc = "C core of the attn module: libattn's context, forward and backward calls, "
             "K/V cache, dropout mask and merge on buffers.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__attn(void)
{
    if (PyType_Ready(&ContextType) < 0 || PyType_Ready(&MHAType) < 0 ||
        PyType_Ready(&KVCacheType) < 0)
        return NULL;
    if (!CapacityError &&
        !(CapacityError = PyErr_NewExceptionWithDoc(
              "attn._attn.CapacityError",
              "A K/V cache has no room for the tokens (ATTN_ERR_CAPACITY); nothing was appended.",
              PyExc_MemoryError, NULL)))
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    if (PyModule_AddStringConstant(m, "version", attn_version_string()) < 0 ||
        PyModule_AddIntConstant(m, "MAX_THREADS", ATTN_MAX_THREADS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_HEAD_DIM", ATTN_MAX_HEAD_DIM) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ContextType);
    if (PyModule_AddObject(m, "Context", (PyObject *)&ContextType) < 0) {
        Py_DECREF(&ContextType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&MHAType);
    if (PyModule_AddObject(m, "MHA", (PyObject *)&MHAType) < 0) {
        Py_DECREF(&MHAType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&KVCacheType);
    if (PyModule_AddObject(m, "KVCache", (PyObject *)&KVCacheType) < 0) {
        Py_DECREF(&KVCacheType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(CapacityError);
    if (PyModule_AddObject(m, "CapacityError", CapacityError) < 0) {
        Py_DECREF(CapacityError);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
