/*
 * attn: libattn on .npy files from the command line.
 *   attn run      one attn_forward call on arrays saved with numpy
 *   attn heatmap  attention weights as an SVG heat map or in the terminal
 *   attn info     version, kernels, BLAS and workspace sizes
 * Exit status: 0 success, 2 bad usage or bad input (nothing written), 1 a failure of the
 * system (memory, threads, writing the output).
 */
#define _GNU_SOURCE /* RTLD_DEFAULT, getopt_long, open_memstream */

#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <attn/attn.h>

#include "heatmap.h"
#include "npy.h"

enum { EXIT_INPUT = 2, EXIT_SYSTEM = 1 };

static const char *cmd = "attn"; /* "attn run" etc., for messages */

static int complain(int status, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return status;
}

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help'.\n", cmd);
    return EXIT_INPUT;
}

/* Whole-string integer parsing: no sign tricks, no trailing text, range checked. */
static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Parses "a,b,c" into at most max int64 values; returns the count, or -1 for a malformed list
 * or one longer than max. */
static long parse_list(const char *s, int64_t lo, int64_t hi, int64_t *vals, size_t max)
{
    size_t n = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char buf[32];
        if (n == max || len >= sizeof buf)
            return -1;
        memcpy(buf, p, len);
        buf[len] = '\0';
        if (parse_i64(buf, lo, hi, &vals[n]) != 0)
            return -1;
        n++;
        if (!comma)
            return (long)n;
        p = comma + 1;
    }
}

static void shape_str(const npy_array *a, char *buf, size_t size)
{
    size_t n = (size_t)snprintf(buf, size, "(");
    for (int d = 0; d < a->ndim && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, "%" PRIu64 "%s", a->shape[d],
                              (a->ndim == 1 || d + 1 < a->ndim) ? ", " : "");
    if (a->ndim == 1 && n >= 1 && n < size)
        n -= 1;
    if (n < size)
        snprintf(buf + n, size - n, ")");
}

/* Loads an array of the wanted kind; a float64/float16 file gets a note on stderr. */
static int load(const char *path, npy_kind want, npy_array *a)
{
    char err[512];
    if (npy_load(path, a, err, sizeof err) != 0)
        return complain(EXIT_INPUT, "%s", err);
    if (a->kind != want) {
        int rc = complain(EXIT_INPUT, "%s: dtype '%s' where %s is expected", path, a->descr,
                          want == NPY_FLOAT32 ? "a floating-point array (float32, float64 or "
                                                "float16)"
                                              : "a boolean or uint8 mask");
        npy_free(a);
        return rc;
    }
    if (a->converted)
        fprintf(stderr, "%s: note: %s: dtype '%s' converted to float32\n", cmd, path, a->descr);
    return 0;
}

/* ---- attn run ----------------------------------------------------------------------------- */

static const char run_help[] =
    "Usage: attn run --q Q.npy --k K.npy --v V.npy --out OUT.npy [options]\n"
    "\n"
    "Computes out = softmax(Q K^T * scale + mask) V with libattn on arrays saved by numpy.\n"
    "Q is [batch, heads, q_len, qk_dim] (4-D), [heads, q_len, qk_dim] (3-D) or [q_len, qk_dim]\n"
    "(2-D); K is the same with kv heads and kv_len, V with v_dim. The head counts, lengths and\n"
    "dims come from the shapes; fewer kv heads than query heads is grouped-query attention.\n"
    "OUT has Q's shape with v_dim. Arrays are float32 (float64 and float16 are converted).\n"
    "\n"
    "Options:\n"
    "  --q, --k, --v FILE     the inputs (required)\n"
    "  --out FILE             the output (required)\n"
    "  --layout bhsd|bshd     axis order of 4-D and 3-D Q, K, V and OUT (default bhsd;\n"
    "                         bshd is [batch, seq, heads, dim] or [seq, heads, dim])\n"
    "  --scale S              score scale (default 0: 1/sqrt(qk_dim))\n"
    "  --causal               key j visible to query i only if j <= i + q_offset\n"
    "  --q-offset N           position of query row 0 on the key axis (default kv_len - q_len)\n"
    "  --window L,R           key j visible only if i+q_offset-L <= j <= i+q_offset+R;\n"
    "                         -1 leaves a side unbounded\n"
    "  --kv-lens N1,N2,...    keys j >= N_b hidden in batch b (one value per batch)\n"
    "  --mask FILE            boolean or uint8 mask, nonzero = visible, broadcastable to\n"
    "                         [batch, heads, q_len, kv_len] (axes of size 1 repeat)\n"
    "  --bias FILE            additive float bias, broadcastable likewise\n"
    "  --weights FILE         write the attention weights [batch, heads, q_len, kv_len]\n"
    "  --head-mean            ... averaged over the heads instead: [batch, q_len, kv_len]\n"
    "  --lse FILE             write the log-sum-exp of every row [batch, heads, q_len]\n"
    "  --entropy FILE         write the entropy of every row [batch, heads, q_len]\n"
    "  --masked-rows zero|nan what a row that sees no key produces (default zero)\n"
    "  --blas-untouched       leave the BLAS's own thread count alone\n"
    "  --threads N            threads (default 0: every processor available)\n"
    "  --isa scalar|avx2|avx512  force a softmax kernel (same as ATTN_ISA)\n"
    "  -q, --quiet            print nothing on success\n"
    "  -h, --help             this text\n"
    "\n"
    "Output arrays drop the axes their input lacked: with 3-D inputs, weights are\n"
    "[heads, q_len, kv_len] and lse [heads, q_len]; with 2-D inputs [q_len, kv_len] and [q_len].\n"
    "Exit status: 0 success, 2 bad arguments or input files (nothing written), 1 system error.\n";

typedef struct dims4 {
    uint64_t b, h, s, d;
} dims4;

static int tensor_dims(const npy_array *a, const char *path, int bshd, dims4 *t)
{
    char sh[256];
    shape_str(a, sh, sizeof sh);
    if (a->ndim == 4)
        *t = bshd ? (dims4){a->shape[0], a->shape[2], a->shape[1], a->shape[3]}
                  : (dims4){a->shape[0], a->shape[1], a->shape[2], a->shape[3]};
    else if (a->ndim == 3)
        *t = bshd ? (dims4){1, a->shape[1], a->shape[0], a->shape[2]}
                  : (dims4){1, a->shape[0], a->shape[1], a->shape[2]};
    else if (a->ndim == 2)
        *t = (dims4){1, 1, a->shape[0], a->shape[1]};
    else
        return complain(EXIT_INPUT, "%s: shape %s: expected a 2-D, 3-D or 4-D array", path, sh);
    for (int d = 0; d < a->ndim; d++) {
        if (a->shape[d] == 0)
            return complain(EXIT_INPUT, "%s: shape %s has an empty axis", path, sh);
        if (a->shape[d] > UINT32_MAX)
            return complain(EXIT_INPUT, "%s: shape %s: axis %d exceeds %" PRIu32, path, sh, d,
                            UINT32_MAX);
    }
    return 0;
}

/*
 * A mask or bias broadcast to [batch, heads, q_len, kv_len] as libattn takes it: strides per
 * axis, 0 where the array has size 1 (or lacks the axis). libattn needs the key axis
 * contiguous, so an array that broadcasts along it is expanded into *owned.
 */
static int broadcast(npy_array *a, const char *path, const uint64_t target[4], size_t elem,
                     attn_strides *st, void **base, void **owned)
{
    static const char *const names[4] = {"batch", "heads", "q_len", "kv_len"};
    char sh[256];
    shape_str(a, sh, sizeof sh);
    if (a->ndim > 4)
        return complain(EXIT_INPUT, "%s: shape %s has more than 4 axes", path, sh);
    uint64_t es[4];
    for (int d = 0; d < 4; d++) {
        int ad = d - (4 - a->ndim);
        uint64_t n = ad >= 0 ? a->shape[ad] : 1;
        if (n != target[d] && n != 1)
            return complain(EXIT_INPUT, "%s: shape %s does not broadcast to [%" PRIu64 ", %" PRIu64
                                        ", %" PRIu64 ", %" PRIu64 "]: its %s axis is %" PRIu64
                                        ", not %" PRIu64 " or 1",
                            path, sh, target[0], target[1], target[2], target[3], names[d], n,
                            target[d]);
        es[d] = n;
    }
    *owned = NULL;
    *base = a->data;
    if (es[3] == 1 && target[3] > 1) {
        size_t rows = (size_t)(es[0] * es[1] * es[2]), n = (size_t)target[3];
        if (rows > SIZE_MAX / n / elem)
            return complain(EXIT_SYSTEM, "%s: too large to broadcast", path);
        unsigned char *buf = malloc(rows * n * elem);
        if (!buf)
            return complain(EXIT_SYSTEM, "out of memory broadcasting %s", path);
        for (size_t r = 0; r < rows; r++)
            for (size_t j = 0; j < n; j++)
                memcpy(buf + (r * n + j) * elem, (unsigned char *)a->data + r * elem, elem);
        es[3] = target[3];
        *owned = *base = buf;
    }
    int64_t seq = (int64_t)es[3], head = seq * (int64_t)es[2], batch = head * (int64_t)es[1];
    st->seq = es[2] == 1 ? 0 : seq;
    st->head = es[1] == 1 ? 0 : head;
    st->batch = es[0] == 1 ? 0 : batch;
    return 0;
}

typedef struct output {
    const char *path;
    float *data;
    int ndim;
    uint64_t shape[4];
    char tmp[4096 + 16];
    int have_tmp;
} output;

static size_t out_count(const output *o)
{
    size_t n = 1;
    for (int d = 0; d < o->ndim; d++)
        n *= (size_t)o->shape[d];
    return n;
}

/* Writes every output to a temporary next to it, then renames them all; on any failure the
 * temporaries are removed and no output file is created or replaced. */
static int write_outputs(output *outs, int n)
{
    char err[512];
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        unsigned char *buf;
        size_t len;
        if (npy_encode_f32(outs[i].data, outs[i].ndim, outs[i].shape, &buf, &len, err,
                           sizeof err) != 0) {
            rc = complain(EXIT_SYSTEM, "%s: %s", outs[i].path, err);
            break;
        }
        if (npy_write_temp(outs[i].path, buf, len, outs[i].tmp, sizeof outs[i].tmp, err,
                           sizeof err) != 0)
            rc = complain(EXIT_SYSTEM, "%s", err);
        else
            outs[i].have_tmp = 1;
        free(buf);
    }
    for (int i = 0; i < n && rc == 0; i++)
        if (rename(outs[i].tmp, outs[i].path) != 0)
            rc = complain(EXIT_SYSTEM, "%s: %s", outs[i].path, strerror(errno));
        else
            outs[i].have_tmp = 0;
    for (int i = 0; i < n; i++)
        if (outs[i].have_tmp)
            unlink(outs[i].tmp);
    return rc;
}

static int cmd_run(int argc, char **argv)
{
    enum { O_Q = 256, O_K, O_V, O_OUT, O_LAYOUT, O_SCALE, O_CAUSAL, O_QOFF, O_WINDOW, O_KVLENS,
           O_MASK, O_BIAS, O_WEIGHTS, O_HEADMEAN, O_LSE, O_ENTROPY, O_THREADS, O_ISA,
           O_MASKED, O_UNTOUCHED };
    static const struct option opts[] = {
        {"q", required_argument, 0, O_Q},           {"k", required_argument, 0, O_K},
        {"v", required_argument, 0, O_V},           {"out", required_argument, 0, O_OUT},
        {"layout", required_argument, 0, O_LAYOUT}, {"scale", required_argument, 0, O_SCALE},
        {"causal", no_argument, 0, O_CAUSAL},       {"q-offset", required_argument, 0, O_QOFF},
        {"window", required_argument, 0, O_WINDOW}, {"kv-lens", required_argument, 0, O_KVLENS},
        {"mask", required_argument, 0, O_MASK},     {"bias", required_argument, 0, O_BIAS},
        {"weights", required_argument, 0, O_WEIGHTS}, {"head-mean", no_argument, 0, O_HEADMEAN},
        {"lse", required_argument, 0, O_LSE},       {"entropy", required_argument, 0, O_ENTROPY},
        {"threads", required_argument, 0, O_THREADS}, {"isa", required_argument, 0, O_ISA},
        {"masked-rows", required_argument, 0, O_MASKED},
        {"blas-untouched", no_argument, 0, O_UNTOUCHED},
        {"quiet", no_argument, 0, 'q'},             {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *qp = NULL, *kp = NULL, *vp = NULL, *outp = NULL, *maskp = NULL, *biasp = NULL;
    const char *weightsp = NULL, *lsep = NULL, *entp = NULL, *isa = NULL, *kvlens_arg = NULL;
    int bshd = 0, causal = 0, head_mean = 0, nan_rows = 0, untouched = 0, quiet = 0;
    int64_t q_offset = ATTN_Q_OFFSET_DEFAULT, win[2] = {-1, -1}, threads = 0;
    double scale = 0.0;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hq", opts, NULL)) != -1) {
        switch (c) {
        case O_Q: qp = optarg; break;
        case O_K: kp = optarg; break;
        case O_V: vp = optarg; break;
        case O_OUT: outp = optarg; break;
        case O_MASK: maskp = optarg; break;
        case O_BIAS: biasp = optarg; break;
        case O_WEIGHTS: weightsp = optarg; break;
        case O_LSE: lsep = optarg; break;
        case O_ENTROPY: entp = optarg; break;
        case O_HEADMEAN: head_mean = 1; break;
        case O_CAUSAL: causal = 1; break;
        case O_UNTOUCHED: untouched = 1; break;
        case 'q': quiet = 1; break;
        case O_LAYOUT:
            if (strcmp(optarg, "bhsd") == 0)
                bshd = 0;
            else if (strcmp(optarg, "bshd") == 0)
                bshd = 1;
            else
                return usage_error("--layout must be bhsd or bshd, not '%s'", optarg);
            break;
        case O_SCALE: {
            char *end;
            errno = 0;
            scale = strtod(optarg, &end);
            if (!*optarg || *end || errno == ERANGE)
                return usage_error("--scale: '%s' is not a number", optarg);
            break;
        }
        case O_QOFF:
            if (parse_i64(optarg, INT64_MIN + 1, INT64_MAX, &q_offset) != 0)
                return usage_error("--q-offset: '%s' is not an integer", optarg);
            break;
        case O_WINDOW:
            if (parse_list(optarg, -1, INT64_MAX, win, 2) != 2)
                return usage_error("--window takes L,R: two integers >= -1 (-1 = unbounded), "
                                   "not '%s'", optarg);
            break;
        case O_KVLENS: kvlens_arg = optarg; break;
        case O_THREADS:
            if (parse_i64(optarg, 0, ATTN_MAX_THREADS, &threads) != 0)
                return usage_error("--threads: '%s' is not an integer in 0..%u", optarg,
                                   ATTN_MAX_THREADS);
            break;
        case O_ISA:
            if (strcmp(optarg, "scalar") && strcmp(optarg, "avx2") && strcmp(optarg, "avx512"))
                return usage_error("--isa must be scalar, avx2 or avx512, not '%s'", optarg);
            isa = optarg;
            break;
        case O_MASKED:
            if (strcmp(optarg, "zero") == 0)
                nan_rows = 0;
            else if (strcmp(optarg, "nan") == 0)
                nan_rows = 1;
            else
                return usage_error("--masked-rows must be zero or nan, not '%s'", optarg);
            break;
        case 'h': fputs(run_help, stdout); return 0;
        case ':': return usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!qp || !kp || !vp || !outp)
        return usage_error("--q, --k, --v and --out are required");
    if (head_mean && !weightsp)
        return usage_error("--head-mean needs --weights");
    const char *outpaths[4] = {outp, weightsp, lsep, entp};
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            if (outpaths[i] && outpaths[j] && strcmp(outpaths[i], outpaths[j]) == 0)
                return usage_error("'%s' is given for two outputs", outpaths[i]);
    /* The library reads ATTN_ISA once, at its first call: set it before any. */
    if (isa && setenv("ATTN_ISA", isa, 1) != 0)
        return complain(EXIT_SYSTEM, "cannot set ATTN_ISA");

    int rc = 0;
    npy_array q = {0}, k = {0}, v = {0}, mask = {0}, bias = {0};
    void *mask_owned = NULL, *bias_owned = NULL;
    output outs[4];
    int nouts = 0;
    memset(outs, 0, sizeof outs);
    attn_ctx *ctx = NULL;
    int32_t *kv_lens = NULL;
    dims4 tq, tk, tv;
    char sq[256], sk[256], sv[256];

    if ((rc = load(qp, NPY_FLOAT32, &q)) || (rc = load(kp, NPY_FLOAT32, &k)) ||
        (rc = load(vp, NPY_FLOAT32, &v)))
        goto done;
    if ((rc = tensor_dims(&q, qp, bshd, &tq)) || (rc = tensor_dims(&k, kp, bshd, &tk)) ||
        (rc = tensor_dims(&v, vp, bshd, &tv)))
        goto done;
    shape_str(&q, sq, sizeof sq);
    shape_str(&k, sk, sizeof sk);
    shape_str(&v, sv, sizeof sv);
    if (tk.b != tq.b || tv.b != tq.b) {
        rc = complain(EXIT_INPUT, "batch sizes differ: %s %s, %s %s, %s %s", qp, sq, kp, sk, vp,
                      sv);
        goto done;
    }
    if (tk.h != tv.h || tk.s != tv.s) {
        rc = complain(EXIT_INPUT, "%s %s and %s %s differ in heads or length", kp, sk, vp, sv);
        goto done;
    }
    if (tk.d != tq.d) {
        rc = complain(EXIT_INPUT, "%s %s and %s %s differ in feature size (qk_dim)", qp, sq, kp,
                      sk);
        goto done;
    }
    if (tq.h % tk.h != 0) {
        rc = complain(EXIT_INPUT, "%s has %" PRIu64 " heads, %s %" PRIu64 ": the kv heads must "
                                  "divide the query heads", qp, tq.h, kp, tk.h);
        goto done;
    }
    uint64_t B = tq.b, H = tq.h, G = tk.h, Sq = tq.s, Skv = tk.s, D = tq.d, E = tv.d;
    if ((double)B * H * Sq * (E > Skv ? E : Skv) > (double)(SIZE_MAX / 8)) {
        rc = complain(EXIT_INPUT, "the outputs would not fit in memory");
        goto done;
    }

    if (kvlens_arg) {
        size_t max = 1;
        for (const char *p = kvlens_arg; *p; p++)
            max += *p == ',';
        int64_t *vals = malloc(sizeof *vals * max);
        kv_lens = malloc(sizeof *kv_lens * max);
        if (!vals || !kv_lens) {
            free(vals);
            rc = complain(EXIT_SYSTEM, "out of memory");
            goto done;
        }
        long n = parse_list(kvlens_arg, INT32_MIN, INT32_MAX, vals, max);
        for (long i = 0; i < n; i++)
            kv_lens[i] = (int32_t)vals[i];
        free(vals);
        if (n < 0) {
            rc = usage_error("--kv-lens takes comma-separated 32-bit integers, not '%s'",
                             kvlens_arg);
            goto done;
        }
        if ((uint64_t)n != B) {
            rc = usage_error("--kv-lens has %ld value%s, the batch is %" PRIu64, n,
                             n == 1 ? "" : "s", B);
            goto done;
        }
    }

    attn_args args;
    attn_args_init(&args);
    const uint64_t target[4] = {B, H, Sq, Skv};
    if (maskp) {
        void *base;
        if ((rc = load(maskp, NPY_UINT8, &mask)) ||
            (rc = broadcast(&mask, maskp, target, 1, &args.mask_strides, &base, &mask_owned)))
            goto done;
        args.mask = base;
    }
    if (biasp) {
        void *base;
        if ((rc = load(biasp, NPY_FLOAT32, &bias)) ||
            (rc = broadcast(&bias, biasp, target, sizeof(float), &args.bias_strides, &base,
                            &bias_owned)))
            goto done;
        args.bias = base;
    }

    /* Outputs: out in Q's layout; the extra outputs in libattn's [batch, heads, q_len, ...]
     * order, without the axes the inputs lacked. */
    output *o = &outs[nouts++];
    o->path = outp;
    o->ndim = q.ndim;
    if (q.ndim == 4)
        memcpy(o->shape, bshd ? (uint64_t[4]){B, Sq, H, E} : (uint64_t[4]){B, H, Sq, E},
               sizeof o->shape);
    else if (q.ndim == 3)
        memcpy(o->shape, bshd ? (uint64_t[3]){Sq, H, E} : (uint64_t[3]){H, Sq, E},
               3 * sizeof(uint64_t));
    else
        o->shape[0] = Sq, o->shape[1] = E;
    output *ow = NULL, *ol = NULL, *oe = NULL;
    if (weightsp) {
        ow = &outs[nouts++];
        ow->path = weightsp;
        if (head_mean) {
            ow->ndim = q.ndim == 4 ? 3 : 2;
            uint64_t s[3] = {B, Sq, Skv};
            memcpy(ow->shape, q.ndim == 4 ? s : s + 1, (size_t)ow->ndim * sizeof(uint64_t));
        } else {
            ow->ndim = q.ndim;
            uint64_t s[4] = {B, H, Sq, Skv};
            memcpy(ow->shape, s + (4 - q.ndim), (size_t)q.ndim * sizeof(uint64_t));
        }
    }
    for (int which = 0; which < 2; which++) {
        const char *p = which ? entp : lsep;
        if (!p)
            continue;
        output *x = &outs[nouts++];
        x->path = p;
        x->ndim = q.ndim - 1;
        uint64_t s[3] = {B, H, Sq};
        memcpy(x->shape, s + (4 - q.ndim), (size_t)x->ndim * sizeof(uint64_t));
        *(which ? &oe : &ol) = x;
    }
    for (int i = 0; i < nouts; i++) {
        outs[i].data = calloc(out_count(&outs[i]) ? out_count(&outs[i]) : 1, sizeof(float));
        if (!outs[i].data) {
            rc = complain(EXIT_SYSTEM, "out of memory for %s", outs[i].path);
            goto done;
        }
    }

    attn_desc desc;
    attn_desc_init(&desc);
    desc.q_heads = (uint32_t)H;
    desc.kv_heads = (uint32_t)G;
    desc.qk_dim = (uint32_t)D;
    desc.v_dim = (uint32_t)E;
    desc.scale = (float)scale;
    if (scale != 0.0 && (desc.scale == 0.0f || isinf(desc.scale))) {
        rc = usage_error("--scale %g is outside float's range", scale);
        goto done;
    }
    desc.flags = (causal ? ATTN_CAUSAL : 0u) | (untouched ? ATTN_BLAS_THREADS_UNTOUCHED : 0u);
    desc.window_left = win[0];
    desc.window_right = win[1];
    desc.masked_rows = nan_rows ? ATTN_MASKED_ROWS_NAN : ATTN_MASKED_ROWS_ZERO;
    desc.threads = (uint32_t)threads;
    attn_status st = attn_create(&desc, &ctx);
    if (st != ATTN_OK) {
        rc = complain(st == ATTN_ERR_NO_MEMORY || st == ATTN_ERR_THREADS ? EXIT_SYSTEM
                                                                          : EXIT_INPUT,
                      "%s (%s)", attn_last_error(NULL), attn_status_str(st));
        goto done;
    }
    args.batch = (uint32_t)B;
    args.q_len = (uint32_t)Sq;
    args.kv_len = (uint32_t)Skv;
    attn_strides (*layout)(uint32_t, uint32_t, uint32_t) = bshd ? attn_strides_bshd
                                                                 : attn_strides_bhsd;
    args.q = q.data;
    args.q_strides = layout((uint32_t)H, (uint32_t)Sq, (uint32_t)D);
    args.k = k.data;
    args.k_strides = layout((uint32_t)G, (uint32_t)Skv, (uint32_t)D);
    args.v = v.data;
    args.v_strides = layout((uint32_t)G, (uint32_t)Skv, (uint32_t)E);
    args.out = outs[0].data;
    args.out_strides = layout((uint32_t)H, (uint32_t)Sq, (uint32_t)E);
    args.q_offset = q_offset;
    args.kv_lens = kv_lens;
    if (ow) {
        args.weights_mode = head_mean ? ATTN_WEIGHTS_HEAD_MEAN : ATTN_WEIGHTS_PER_HEAD;
        args.weights = ow->data;
    }
    args.lse = ol ? ol->data : NULL;
    args.entropy = oe ? oe->data : NULL;
    st = attn_forward(ctx, &args);
    if (st != ATTN_OK) {
        rc = complain(st == ATTN_ERR_NO_MEMORY || st == ATTN_ERR_THREADS ? EXIT_SYSTEM
                                                                          : EXIT_INPUT,
                      "%s (%s)", attn_last_error(ctx), attn_status_str(st));
        goto done;
    }
    if ((rc = write_outputs(outs, nouts)) != 0)
        goto done;
    if (!quiet) {
        printf("batch %" PRIu64 ", %" PRIu64 " query head%s over %" PRIu64 " kv head%s, q_len %"
               PRIu64 ", kv_len %" PRIu64 ", qk_dim %" PRIu64 ", v_dim %" PRIu64 " (%s kernels)\n",
               B, H, H == 1 ? "" : "s", G, G == 1 ? "" : "s", Sq, Skv, D, E, attn_kernel_isa());
        for (int i = 0; i < nouts; i++) {
            npy_array shown = {.ndim = outs[i].ndim};
            memcpy(shown.shape, outs[i].shape, sizeof outs[i].shape);
            char s[256];
            shape_str(&shown, s, sizeof s);
            printf("wrote %s %s\n", outs[i].path, s);
        }
    }

done:
    attn_destroy(ctx);
    for (int i = 0; i < 4; i++)
        free(outs[i].data);
    free(kv_lens);
    free(mask_owned);
    free(bias_owned);
    npy_free(&q);
    npy_free(&k);
    npy_free(&v);
    npy_free(&mask);
    npy_free(&bias);
    return rc;
}

/* ---- attn heatmap ------------------------------------------------------------------------- */

static const char heatmap_help[] =
    "Usage: attn heatmap --weights W.npy [--batch B] [--head H] [--rows-labels A.txt]\n"
    "                    [--cols-labels B.txt] [--title TEXT] --out OUT.svg|-\n"
    "\n"
    "Draws attention weights as a heat map: one row per query, one column per key, with the\n"
    "labels, a colour bar and the entropy of every row. W is [q_len, kv_len], or\n"
    "[n, q_len, kv_len] (the slice --head, or --batch, default 0), or\n"
    "[batch, heads, q_len, kv_len] (the slice --batch, --head; default 0, 0), as written by\n"
    "attn run --weights. float32, float64 or float16.\n"
    "\n"
    "Options:\n"
    "  --weights FILE       the weights (required)\n"
    "  --batch B, --head H  which slice of a 3-D or 4-D array to draw\n"
    "  --rows-labels FILE   one label per line for the rows (queries), e.g. the tokens\n"
    "  --cols-labels FILE   one label per line for the columns (keys)\n"
    "  --title TEXT         the title (default: the file name and the slice)\n"
    "  --out FILE           the SVG file to write; '-' draws on the terminal with 256-colour\n"
    "                       escapes instead\n"
    "  -h, --help           this text\n"
    "\n"
    "Colours span 0 .. the largest weight shown; NaN cells are grey. At most 1,000,000 cells.\n"
    "Exit status: 0 success, 2 bad arguments or input files (nothing written), 1 system error.\n";

/* Reads one label per line; exactly `want` lines (a final newline is optional). */
static int read_labels(const char *path, size_t want, const char *what, char **text,
                       char ***labels)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return complain(EXIT_INPUT, "%s: %s", path, strerror(errno));
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int ch;
    while (buf && (ch = getc(f)) != EOF) {
        if (len + 2 > cap) {
            char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        buf[len++] = (char)ch;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf)
        return complain(EXIT_SYSTEM, "%s: out of memory", path);
    if (bad) {
        free(buf);
        return complain(EXIT_INPUT, "%s: read error", path);
    }
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    buf[len] = '\0';
    size_t n = len == 0 && want != 1 ? 0 : 1;
    for (size_t i = 0; i < len; i++)
        n += buf[i] == '\n';
    if (n != want) {
        free(buf);
        return complain(EXIT_INPUT, "%s: %zu labels for %zu %s", path, n, want, what);
    }
    char **l = malloc(sizeof *l * (want ? want : 1));
    if (!l) {
        free(buf);
        return complain(EXIT_SYSTEM, "out of memory");
    }
    char *p = buf;
    for (size_t i = 0; i < want; i++) {
        l[i] = p;
        char *nl = strchr(p, '\n');
        if (nl) {
            *nl = '\0';
            p = nl + 1;
        }
        size_t m = strlen(l[i]);
        if (m && l[i][m - 1] == '\r')
            l[i][m - 1] = '\0';
    }
    *text = buf;
    *labels = l;
    return 0;
}

static int cmd_heatmap(int argc, char **argv)
{
    enum { O_W = 256, O_B, O_H, O_RL, O_CL, O_OUT, O_TITLE };
    static const struct option opts[] = {
        {"weights", required_argument, 0, O_W},     {"batch", required_argument, 0, O_B},
        {"head", required_argument, 0, O_H},        {"rows-labels", required_argument, 0, O_RL},
        {"cols-labels", required_argument, 0, O_CL}, {"out", required_argument, 0, O_OUT},
        {"title", required_argument, 0, O_TITLE},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *wp = NULL, *rlp = NULL, *clp = NULL, *outp = NULL, *title = NULL;
    int64_t bi = -1, hi = -1;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case O_W: wp = optarg; break;
        case O_RL: rlp = optarg; break;
        case O_CL: clp = optarg; break;
        case O_OUT: outp = optarg; break;
        case O_TITLE: title = optarg; break;
        case O_B:
            if (parse_i64(optarg, 0, INT64_MAX, &bi) != 0)
                return usage_error("--batch: '%s' is not a non-negative integer", optarg);
            break;
        case O_H:
            if (parse_i64(optarg, 0, INT64_MAX, &hi) != 0)
                return usage_error("--head: '%s' is not a non-negative integer", optarg);
            break;
        case 'h': fputs(heatmap_help, stdout); return 0;
        case ':': return usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!wp || !outp)
        return usage_error("--weights and --out are required");

    npy_array w;
    int rc = load(wp, NPY_FLOAT32, &w);
    if (rc)
        return rc;
    char sh[256], deftitle[512];
    char *rtext = NULL, *ctext = NULL, **rl = NULL, **cl = NULL;
    char *svg = NULL;
    size_t svglen = 0;
    shape_str(&w, sh, sizeof sh);
    size_t rows = 0, cols = 0, offset = 0;
    const char *base = strrchr(wp, '/') ? strrchr(wp, '/') + 1 : wp;
    if (w.ndim < 2 || w.ndim > 4) {
        rc = complain(EXIT_INPUT, "%s: shape %s: expected a 2-D, 3-D or 4-D array", wp, sh);
        goto done;
    }
    rows = (size_t)w.shape[w.ndim - 2];
    cols = (size_t)w.shape[w.ndim - 1];
    if (rows == 0 || cols == 0) {
        rc = complain(EXIT_INPUT, "%s: shape %s has no cells", wp, sh);
        goto done;
    }
    if (rows > 1000000 / cols) {
        rc = complain(EXIT_INPUT, "%s: %zu x %zu cells are too many for a heat map (at most "
                                  "1,000,000): slice the array first", wp, rows, cols);
        goto done;
    }
    if (w.ndim == 2) {
        if (bi > 0 || hi > 0) {
            rc = complain(EXIT_INPUT, "%s: shape %s has no batch or head axis to select", wp, sh);
            goto done;
        }
        snprintf(deftitle, sizeof deftitle, "%s", base);
    } else if (w.ndim == 3) {
        if (bi >= 0 && hi >= 0) {
            rc = complain(EXIT_INPUT, "%s: shape %s has one leading axis: give --batch or "
                                      "--head, not both", wp, sh);
            goto done;
        }
        int64_t idx = hi >= 0 ? hi : bi >= 0 ? bi : 0;
        if ((uint64_t)idx >= w.shape[0]) {
            rc = complain(EXIT_INPUT, "%s: index %" PRId64 " is outside shape %s", wp, idx, sh);
            goto done;
        }
        offset = (size_t)idx * rows * cols;
        snprintf(deftitle, sizeof deftitle, "%s [%" PRId64 "]", base, idx);
    } else {
        int64_t b = bi >= 0 ? bi : 0, h = hi >= 0 ? hi : 0;
        if ((uint64_t)b >= w.shape[0] || (uint64_t)h >= w.shape[1]) {
            rc = complain(EXIT_INPUT, "%s: batch %" PRId64 ", head %" PRId64 " is outside shape %s",
                          wp, b, h, sh);
            goto done;
        }
        offset = ((size_t)b * (size_t)w.shape[1] + (size_t)h) * rows * cols;
        snprintf(deftitle, sizeof deftitle, "%s: batch %" PRId64 ", head %" PRId64, base, b, h);
    }
    if (rlp && (rc = read_labels(rlp, rows, "rows", &rtext, &rl)))
        goto done;
    if (clp && (rc = read_labels(clp, cols, "columns", &ctext, &cl)))
        goto done;
    heatmap hm = {.rows = rows,
                  .cols = cols,
                  .values = (const float *)w.data + offset,
                  .stride = cols,
                  .row_labels = (const char *const *)rl,
                  .col_labels = (const char *const *)cl,
                  .title = title ? title : deftitle,
                  .row_axis = "query",
                  .col_axis = "key"};
    if (strcmp(outp, "-") == 0) {
        if (heatmap_terminal(stdout, &hm) != 0 || fflush(stdout) != 0)
            rc = complain(EXIT_SYSTEM, "error writing to standard output");
        goto done;
    }
    FILE *mem = open_memstream(&svg, &svglen);
    if (!mem) {
        rc = complain(EXIT_SYSTEM, "out of memory");
        goto done;
    }
    int bad = heatmap_svg(mem, &hm) != 0;
    if (fclose(mem) != 0 || bad) {
        rc = complain(EXIT_SYSTEM, "out of memory writing the SVG");
        goto done;
    }
    char err[512];
    if (npy_write_file(outp, (const unsigned char *)svg, svglen, err, sizeof err) != 0)
        rc = complain(EXIT_SYSTEM, "%s", err);

done:
    free(svg);
    free(rl);
    free(cl);
    free(rtext);
    free(ctext);
    npy_free(&w);
    return rc;
}

/* ---- attn info ---------------------------------------------------------------------------- */

static const char info_help[] =
    "Usage: attn info [--q-heads H] [--kv-heads G] [--qk-dim D] [--v-dim E] [--threads N]\n"
    "\n"
    "Prints the library version, the softmax kernels this CPU uses, the BLAS libattn is\n"
    "linked with and its thread count. With any of the options, also the workspace a context\n"
    "of those dimensions needs (attn_workspace_size); unspecified ones take attn_desc_init's\n"
    "defaults (1 head, dims 64, threads 0 = every processor available).\n"
    "  -h, --help  this text\n";

/* A function of the process's BLAS, if it exports one by that name. */
static void *blas_symbol(const char *name)
{
    dlerror();
    return dlsym(RTLD_DEFAULT, name);
}

static int cmd_info(int argc, char **argv)
{
    enum { O_QH = 256, O_KVH, O_QKD, O_VD, O_T };
    static const struct option opts[] = {
        {"q-heads", required_argument, 0, O_QH}, {"kv-heads", required_argument, 0, O_KVH},
        {"qk-dim", required_argument, 0, O_QKD}, {"v-dim", required_argument, 0, O_VD},
        {"threads", required_argument, 0, O_T},  {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    attn_desc desc;
    attn_desc_init(&desc);
    int sized = 0, c, li = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, &li)) != -1) {
        int64_t v;
        uint32_t *field = c == O_QH ? &desc.q_heads : c == O_KVH ? &desc.kv_heads
                        : c == O_QKD ? &desc.qk_dim : c == O_VD ? &desc.v_dim
                        : c == O_T ? &desc.threads : NULL;
        if (field) {
            if (parse_i64(optarg, 0, UINT32_MAX, &v) != 0)
                return usage_error("--%s: '%s' is not an integer in 0..%" PRIu32,
                                   opts[li].name, optarg, UINT32_MAX);
            *field = (uint32_t)v;
            sized = 1;
            continue;
        }
        switch (c) {
        case 'h': fputs(info_help, stdout); return 0;
        case ':': return usage_error("option '%s' needs a value", argv[optind - 1]);
        default: return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);

    printf("libattn:      %s (header %s)\n", attn_version_string(), ATTN_VERSION_STRING);
    const char *forced = getenv("ATTN_ISA");
    printf("kernels:      %s%s%s%s\n", attn_kernel_isa(), forced ? " (ATTN_ISA=" : "",
           forced ? forced : "", forced ? ")" : "");
    long procs = sysconf(_SC_NPROCESSORS_ONLN);
    printf("processors:   %ld online\n", procs);

    void *cfg = blas_symbol("openblas_get_config"), *nt = blas_symbol("openblas_get_num_threads");
    void *core = blas_symbol("openblas_get_corename"), *par = blas_symbol("openblas_get_parallel");
    void *bver = blas_symbol("bli_info_get_version_str");
    void *bnt = blas_symbol("bli_thread_get_num_threads");
    if (cfg || nt) {
        char *(*f_cfg)(void) = NULL, *(*f_core)(void) = NULL;
        int (*f_nt)(void) = NULL, (*f_par)(void) = NULL;
        /* dlsym gives object pointers; copy them into function pointers bit for bit. */
        memcpy(&f_cfg, &cfg, sizeof cfg);
        memcpy(&f_core, &core, sizeof core);
        memcpy(&f_nt, &nt, sizeof nt);
        memcpy(&f_par, &par, sizeof par);
        printf("BLAS:         %s\n", f_cfg ? f_cfg() : "OpenBLAS (configuration unknown)");
        printf("BLAS core:    %s\n", f_core ? f_core() : "unknown");
        int p = f_par ? f_par() : -1;
        const char *model = p == 0 ? "sequential build" : p == 1 ? "pthreads build"
                          : p == 2 ? "OpenMP build" : "threading model unknown";
        if (f_nt)
            printf("BLAS threads: %d (%s)\n", f_nt(), model);
        else
            printf("BLAS threads: unknown (%s)\n", model);
    } else if (bver || bnt) {
        char *(*f_ver)(void) = NULL;
        int64_t (*f_nt)(void) = NULL;
        memcpy(&f_ver, &bver, sizeof bver);
        memcpy(&f_nt, &bnt, sizeof bnt);
        printf("BLAS:         BLIS %s\n", f_ver ? f_ver() : "(version unknown)");
        if (f_nt)
            printf("BLAS threads: %" PRId64 "%s\n", f_nt(), f_nt() < 0 ? " (not set)" : "");
        else
            printf("BLAS threads: unknown\n");
    } else {
        printf("BLAS:         unknown (no OpenBLAS or BLIS query functions in this process)\n");
        printf("BLAS threads: unknown\n");
    }
    printf("BLAS inside attn_forward: single-threaded unless ATTN_BLAS_THREADS_UNTOUCHED "
           "(docs/threading.md)\n");
    if (sized) {
        size_t ws = attn_workspace_size(&desc);
        if (ws == 0)
            return complain(EXIT_INPUT, "%s", attn_last_error(NULL));
        printf("workspace:    %zu bytes (%.2f MiB) for q_heads %" PRIu32 ", kv_heads %" PRIu32
               ", qk_dim %" PRIu32 ", v_dim %" PRIu32 ", threads %" PRIu32 "%s\n",
               ws, (double)ws / 1048576.0, desc.q_heads, desc.kv_heads, desc.qk_dim, desc.v_dim,
               desc.threads, desc.threads == 0 ? " (every processor)" : "");
    }
    return 0;
}

/* ---- main --------------------------------------------------------------------------------- */

static const char main_help[] =
    "Usage: attn COMMAND [options]\n"
    "\n"
    "libattn on arrays saved by numpy (.npy files).\n"
    "\n"
    "Commands:\n"
    "  run      compute attention: attn run --q q.npy --k k.npy --v v.npy --out o.npy\n"
    "  heatmap  draw attention weights: attn heatmap --weights w.npy --out w.svg\n"
    "  info     version, kernels, BLAS, workspace sizes\n"
    "\n"
    "'attn COMMAND --help' describes each; man attn has the details and examples.\n"
    "  -h, --help     this text\n"
    "  --version      the version\n";

int main(int argc, char **argv)
{
    if (argc < 2)
        return fputs(main_help, stderr), EXIT_INPUT;
    const char *sub = argv[1];
    if (strcmp(sub, "-h") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "help") == 0)
        return fputs(main_help, stdout), 0;
    if (strcmp(sub, "--version") == 0)
        return printf("attn %s\n", attn_version_string()), 0;
    static char name[32];
    snprintf(name, sizeof name, "attn %s", sub);
    cmd = name;
    if (strcmp(sub, "run") == 0)
        return cmd_run(argc - 1, argv + 1);
    if (strcmp(sub, "heatmap") == 0)
        return cmd_heatmap(argc - 1, argv + 1);
    if (strcmp(sub, "info") == 0)
        return cmd_info(argc - 1, argv + 1);
    cmd = "attn";
    return usage_error("unknown command '%s' (run, heatmap or info)", sub);
}
