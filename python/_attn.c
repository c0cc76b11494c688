/*
 * attn._attn: the C core of the Python module. It maps Python buffers (PEP 3118, e.g. numpy
 * arrays) onto libattn's strided views without copying and runs attn_forward with the GIL
 * released. It takes every tensor already in libattn's logical order [batch, head, seq, feature]
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

/* ---- errors -------------------------------------------------------------------------------- */

/* Raises the exception for a libattn status: ValueError for the argument statuses, MemoryError
 * for ATTN_ERR_NO_MEMORY, RuntimeError otherwise. The message is attn_last_error's text followed
 * by the status name; the exception's `status` attribute holds the numeric status. */
static PyObject *raise_status(attn_status st, const char *message)
{
    PyObject *type = PyExc_RuntimeError;
    if (st == ATTN_ERR_NO_MEMORY)
        type = PyExc_MemoryError;
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

enum elem_kind { ELEM_F32, ELEM_BOOL, ELEM_I32 };

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
    }
    return 0;
}

static const char *kind_name(enum elem_kind kind)
{
    return kind == ELEM_F32 ? "float32" : kind == ELEM_BOOL ? "bool or uint8" : "int32";
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

/* Context(q_heads, kv_heads, qk_dim, v_dim, scale, causal, window_left, window_right,
 *         masked_rows, threads): every argument required, libattn's meaning and encoding
 * (scale 0 = 1/sqrt(qk_dim), window bounds -1 = unbounded, masked_rows 0 = zero, 1 = NaN,
 * threads 0 = every processor). */
static int context_init(ContextObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"q_heads", "kv_heads", "qk_dim", "v_dim", "scale", "causal",
                            "window_left", "window_right", "masked_rows", "threads", NULL};
    PyObject *qh, *kvh, *dk, *dv, *wl, *wr, *mr, *th;
    double scale;
    int causal;
    if (self->ctx) {
        PyErr_SetString(PyExc_RuntimeError, "Context is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOdpOOOO:Context", names, &qh, &kvh, &dk,
                                     &dv, &scale, &causal, &wl, &wr, &mr, &th))
        return -1;
    attn_desc d;
    attn_desc_init(&d);
    uint32_t masked_rows;
    if (parse_u32(qh, "q_heads", &d.q_heads) || parse_u32(kvh, "kv_heads", &d.kv_heads) ||
        parse_u32(dk, "qk_dim", &d.qk_dim) || parse_u32(dv, "v_dim", &d.v_dim) ||
        parse_i64(wl, "window_left", &d.window_left) ||
        parse_i64(wr, "window_right", &d.window_right) ||
        parse_u32(mr, "masked_rows", &masked_rows) || parse_u32(th, "threads", &d.threads))
        return -1;
    d.scale = (float)scale;
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

/* Acquires the context's lock, waiting with the GIL released if another thread holds it. */
static void lock_context(ContextObject *self)
{
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

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
                            "weights_mode", "weights", "lse", "entropy", NULL};
    PyObject *oq, *ok, *ov, *oout, *ooff = Py_None, *olens = Py_None, *omask = Py_None,
             *obias = Py_None, *ow = Py_None, *olse = Py_None, *oent = Py_None;
    int weights_mode = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OOOOiOOO:forward", names, &oq, &ok, &ov,
                                     &oout, &ooff, &olens, &omask, &obias, &weights_mode, &ow,
                                     &olse, &oent))
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
    int64_t q_offset = ATTN_Q_OFFSET_DEFAULT;
    if (ooff != Py_None) {
        if (parse_i64(ooff, "q_offset", &q_offset))
            return NULL;
        if (q_offset == ATTN_Q_OFFSET_DEFAULT) { /* the sentinel is not a position */
            PyErr_Format(PyExc_ValueError, "q_offset = %R is outside [%lld, %lld]", ooff,
                         (long long)-ATTN_MAX_DISTANCE, (long long)ATTN_MAX_DISTANCE);
            return NULL;
        }
    }

    const attn_desc *d = &self->desc;
    tensor q, k, v, out, lens, mask, bias, w, lse, ent;
    tensor *all[] = {&q, &k, &v, &out, &lens, &mask, &bias, &w, &lse, &ent};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        all[i]->held = 0;
    PyObject *result = NULL;

    if (acquire(oq, "q", 4, ELEM_F32, 0, 0, &q) || acquire(ok, "k", 4, ELEM_F32, 0, 0, &k) ||
        acquire(ov, "v", 4, ELEM_F32, 0, 0, &v) || acquire(oout, "out", 4, ELEM_F32, 1, 0, &out))
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

    /* The buffers stay acquired (their exporters cannot resize or free them) while the GIL is
     * released; the lock keeps other threads off the context and its error text. */
    attn_status st = ATTN_OK;
    lock_context(self);
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

/* close(): destroys the C context now (waiting for a call in progress); later calls raise. */
static PyObject *context_close(ContextObject *self, PyObject *unused)
{
    (void)unused;
    if (self->ctx) {
        lock_context(self);
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
     "weights=None, lse=None, entropy=None)\n\nOne attn_forward call on buffers in "
     "[batch, head, seq, feature] order; outputs are written in place."},
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
              "window_right, masked_rows, threads)\n\nAn attn_ctx: libattn's descriptor "
              "fields, with libattn's encodings.",
    .tp_methods = context_methods,
    .tp_getset = context_getset,
    .tp_init = (initproc)context_init,
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

static PyMethodDef module_methods[] = {
    {"_error", module_error, METH_VARARGS,
     "_error(status, message) -> the exception a call failing with that status raises"},
    {"kernel_isa", module_kernel_isa, METH_NOARGS,
     "kernel_isa() -> 'scalar' | 'avx2' | 'avx512': the softmax kernel variant in use"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "attn._attn",
    .m_doc = "C core of the attn module: libattn's context and forward call on buffers.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__attn(void)
{
    if (PyType_Ready(&ContextType) < 0)
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
    return m;
}
