/*
 * kernel._speedups: the kernel's strict DAG-CBOR codec in C.
 *
 * The same format as kernel/dagcbor.py (docs/spec.md, "DAG-CBOR"), which stays
 * the reference: it is used when this module is not built, and the tests run
 * both on the IPLD fixtures, the spec's reject table and generated values and
 * bytes, and require the same values, bytes and error classes.
 *
 * decode() reads exactly one canonical item in a single pass: shortest heads,
 * definite lengths, text keys in length-then-bytewise order, no duplicate
 * keys, only tag 42 (a CID, built by the Python callable given to
 * configure()), 64-bit finite floats, no undefined or simple values, valid
 * UTF-8, nothing after the item. Every length is checked against the bytes
 * that remain before anything is allocated; depth and entries per collection
 * are bounded by the caller's limits.
 *
 * encode() writes the one canonical form of a Python value, or raises
 * EncodeError for what DAG-CBOR cannot carry.
 *
 * Nothing here touches files, sockets or the clock: it is part of the pure
 * kernel.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Set by configure(): the kernel's CID class and error classes. */
static PyObject *CIDType = NULL;
static PyObject *cid_from_bytes = NULL;
static PyObject *MalformedError = NULL;
static PyObject *NonCanonicalError = NULL;
static PyObject *LimitExceededError = NULL;
static PyObject *EncodeError = NULL;
static PyObject *str_raw = NULL;
static PyObject *str_offset = NULL;

#define ENCODE_MAX_DEPTH 512
#define DECODE_MAX_DEPTH 512

/* ------------------------------------------------------------------ errors */

static void
raise_at(PyObject *cls, Py_ssize_t offset, const char *fmt, ...)
{
    va_list vargs;
    va_start(vargs, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, vargs);
    va_end(vargs);
    if (msg == NULL)
        return;
    PyObject *args = PyTuple_Pack(1, msg);
    Py_DECREF(msg);
    if (args == NULL)
        return;
    PyObject *kwargs = NULL;
    if (offset >= 0) {
        PyObject *off = PyLong_FromSsize_t(offset);
        if (off == NULL) {
            Py_DECREF(args);
            return;
        }
        kwargs = PyDict_New();
        if (kwargs == NULL || PyDict_SetItem(kwargs, str_offset, off) < 0) {
            Py_DECREF(off);
            Py_XDECREF(kwargs);
            Py_DECREF(args);
            return;
        }
        Py_DECREF(off);
    }
    PyObject *exc = PyObject_Call(cls, args, kwargs);
    Py_DECREF(args);
    Py_XDECREF(kwargs);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
}

static int
configured(void)
{
    if (CIDType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "kernel._speedups.configure() was not called");
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ decode */

typedef struct {
    const uint8_t *data;
    Py_ssize_t len;
    Py_ssize_t pos;
    int max_depth;
    Py_ssize_t max_length;
} Reader;

/* Read one head at r->pos. Returns 0 and sets *major, *info, *arg; -1 on error.
 * Enforces the shortest form of the argument; indefinite lengths are errors.
 * Major type 7 heads are left to the caller (info is returned as is). */
static int
read_head(Reader *r, int *major, int *info, uint64_t *arg)
{
    Py_ssize_t start = r->pos;
    if (r->pos >= r->len) {
        raise_at(MalformedError, start, "malformed CBOR: premature end of data");
        return -1;
    }
    uint8_t b = r->data[r->pos++];
    *major = b >> 5;
    *info = b & 31;
    if (*major == 7) {
        *arg = 0;
        return 0;
    }
    if (*info < 24) {
        *arg = (uint64_t)*info;
        return 0;
    }
    if (*info >= 28) {
        if (*info == 31) {
            if (*major >= 2 && *major <= 5) {
                raise_at(NonCanonicalError, start, "indefinite-length item");
            }
            else {
                raise_at(MalformedError, start, "malformed CBOR: indefinite length on major type %d", *major);
            }
        }
        else {
            raise_at(MalformedError, start, "malformed CBOR: reserved additional information %d", *info);
        }
        return -1;
    }
    int n = 1 << (*info - 24); /* 1, 2, 4 or 8 bytes */
    if (r->len - r->pos < n) {
        raise_at(MalformedError, start, "malformed CBOR: premature end of data");
        return -1;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | r->data[r->pos + i];
    r->pos += n;
    static const uint64_t floor_of[4] = {24, 0x100, 0x10000, 0x100000000ULL};
    if (v < floor_of[*info - 24]) {
        raise_at(NonCanonicalError, start, "not the canonical DAG-CBOR encoding");
        return -1;
    }
    *arg = v;
    return 0;
}

static PyObject *decode_item(Reader *r, int depth);

static PyObject *
decode_negative(uint64_t arg)
{
    if (arg <= (uint64_t)INT64_MAX)
        return PyLong_FromLongLong(-1 - (long long)arg);
    PyObject *u = PyLong_FromUnsignedLongLong(arg);
    if (u == NULL)
        return NULL;
    PyObject *neg = PyNumber_Negative(u);
    Py_DECREF(u);
    if (neg == NULL)
        return NULL;
    PyObject *one = PyLong_FromLong(1);
    PyObject *out = one ? PyNumber_Subtract(neg, one) : NULL;
    Py_XDECREF(one);
    Py_DECREF(neg);
    return out;
}

/* A text string of n bytes at r->pos. */
static PyObject *
decode_text(Reader *r, uint64_t n, Py_ssize_t start)
{
    if (n > (uint64_t)(r->len - r->pos)) {
        raise_at(MalformedError, start, "malformed CBOR: premature end of data");
        return NULL;
    }
    const char *s = (const char *)r->data + r->pos;
    PyObject *text = PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "strict");
    if (text == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            raise_at(MalformedError, start, "malformed CBOR: text is not valid UTF-8");
        }
        return NULL;
    }
    r->pos += (Py_ssize_t)n;
    return text;
}

/* Map keys repeat (every line of every order has the same few), so short
 * keys are kept in a small direct-mapped cache of str objects and shared. */
#define KEY_CACHE_SIZE 512
#define KEY_CACHE_MAX_LEN 24

typedef struct {
    Py_ssize_t len;
    char bytes[KEY_CACHE_MAX_LEN];
    PyObject *str;
} KeyEntry;

static KeyEntry key_cache[KEY_CACHE_SIZE];

/* The field names of the kernel's own structures, interned at import:
 * name -> the interned str (filled in PyInit__speedups). */
static PyObject *known_keys;

static PyObject *
decode_key(Reader *r, uint64_t n, Py_ssize_t start)
{
    if (n > KEY_CACHE_MAX_LEN || n > (uint64_t)(r->len - r->pos))
        return decode_text(r, n, start);
    const uint8_t *p = r->data + r->pos;
    uint32_t h = 2166136261u;
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    KeyEntry *e = &key_cache[(h ^ (h >> 16)) & (KEY_CACHE_SIZE - 1)];
    if (e->str != NULL && e->len == (Py_ssize_t)n && memcmp(e->bytes, p, (size_t)n) == 0) {
        r->pos += (Py_ssize_t)n;
        Py_INCREF(e->str);
        return e->str;
    }
    PyObject *key = decode_text(r, n, start);
    if (key == NULL)
        return NULL;
    /* A known field name becomes the very object the document checks hold
     * ("text", "qty", ...), so they compare by pointer, not by content. Other
     * keys stay plain: interning text from the network would make it
     * immortal on CPython 3.12 (a leak anyone could drive). */
    PyObject *known = PyDict_GetItemWithError(known_keys, key); /* borrowed */
    if (known != NULL) {
        Py_INCREF(known);
        Py_SETREF(key, known);
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    Py_INCREF(key);
    Py_XSETREF(e->str, key);
    e->len = (Py_ssize_t)n;
    memcpy(e->bytes, p, (size_t)n);
    return key;
}

static PyObject *
decode_map(Reader *r, uint64_t n, int depth, Py_ssize_t start)
{
    /* each entry is at least two bytes */
    if (n > (uint64_t)(r->len - r->pos) / 2) {
        raise_at(MalformedError, start, "malformed CBOR: premature end of data");
        return NULL;
    }
    if (n > (uint64_t)r->max_length) {
        raise_at(LimitExceededError, start, "map of %llu entries (limit %zd)",
                 (unsigned long long)n, r->max_length);
        return NULL;
    }
    PyObject *map = PyDict_New();
    if (map == NULL)
        return NULL;
    const uint8_t *prev_key = NULL;
    uint64_t prev_len = 0;
    for (uint64_t i = 0; i < n; i++) {
        Py_ssize_t key_start = r->pos;
        if (depth + 1 > r->max_depth) {
            raise_at(LimitExceededError, key_start, "nesting deeper than %d", r->max_depth);
            goto error;
        }
        int major, info;
        uint64_t klen;
        if (read_head(r, &major, &info, &klen) < 0)
            goto error;
        if (major != 3) {
            raise_at(MalformedError, key_start, "map key is not a text string");
            goto error;
        }
        const uint8_t *kbytes = r->data + r->pos;
        if (klen > (uint64_t)(r->len - r->pos)) {
            raise_at(MalformedError, key_start, "malformed CBOR: premature end of data");
            goto error;
        }
        if (prev_key != NULL) {
            int cmp;
            if (klen != prev_len)
                cmp = klen < prev_len ? -1 : 1;
            else
                cmp = memcmp(kbytes, prev_key, (size_t)klen);
            if (cmp == 0) {
                raise_at(MalformedError, key_start, "duplicate map key");
                goto error;
            }
            if (cmp < 0) {
                raise_at(NonCanonicalError, key_start, "map key out of canonical order");
                goto error;
            }
        }
        PyObject *key = decode_key(r, klen, key_start);
        if (key == NULL)
            goto error;
        prev_key = kbytes;
        prev_len = klen;
        PyObject *value = decode_item(r, depth + 1);
        if (value == NULL) {
            Py_DECREF(key);
            goto error;
        }
        int rc = PyDict_SetItem(map, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0)
            goto error;
    }
    return map;
error:
    Py_DECREF(map);
    return NULL;
}

static PyObject *
decode_array(Reader *r, uint64_t n, int depth, Py_ssize_t start)
{
    if (n > (uint64_t)(r->len - r->pos)) {
        raise_at(MalformedError, start, "malformed CBOR: premature end of data");
        return NULL;
    }
    if (n > (uint64_t)r->max_length) {
        raise_at(LimitExceededError, start, "array of %llu entries (limit %zd)",
                 (unsigned long long)n, r->max_length);
        return NULL;
    }
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)n; i++) {
        PyObject *item = decode_item(r, depth + 1);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

/* A tag: only 42 over 0x00 || binary CID is DAG-CBOR. Tags that stand for a
 * value DAG-CBOR spells without a tag (a bignum in the 64-bit range, the
 * self-describe tag 55799) are non-canonical; every other tag is malformed. */
static PyObject *
decode_tag(Reader *r, uint64_t tag, int depth, Py_ssize_t start)
{
    if (tag == 42) {
        if (depth + 1 > r->max_depth) {
            raise_at(LimitExceededError, r->pos, "nesting deeper than %d", r->max_depth);
            return NULL;
        }
        Py_ssize_t inner = r->pos;
        int major, info;
        uint64_t n;
        if (read_head(r, &major, &info, &n) < 0)
            return NULL;
        if (major != 2) {
            raise_at(MalformedError, inner, "tag 42 must wrap a byte string");
            return NULL;
        }
        if (n > (uint64_t)(r->len - r->pos)) {
            raise_at(MalformedError, inner, "malformed CBOR: premature end of data");
            return NULL;
        }
        const uint8_t *p = r->data + r->pos;
        if (n == 0 || p[0] != 0) {
            raise_at(MalformedError, inner, "tag 42 payload must start with the 0x00 multibase prefix");
            return NULL;
        }
        PyObject *raw = PyBytes_FromStringAndSize((const char *)p + 1, (Py_ssize_t)n - 1);
        if (raw == NULL)
            return NULL;
        r->pos += (Py_ssize_t)n;
        PyObject *cid = PyObject_CallOneArg(cid_from_bytes, raw);
        Py_DECREF(raw);
        return cid;
    }
    if (tag == 55799 || tag == 28 || tag == 256) {
        /* self-describe, "shareable", string-reference namespace: wrappers
         * around a value that DAG-CBOR spells without them */
        raise_at(NonCanonicalError, start, "not the canonical DAG-CBOR encoding (tag %llu around a value)",
                 (unsigned long long)tag);
        return NULL;
    }
    if (tag == 2 || tag == 3) {
        /* A bignum: non-canonical when the value fits the 64-bit range DAG-CBOR
         * spells as a plain integer, malformed beyond it. */
        Py_ssize_t inner = r->pos;
        int major, info;
        uint64_t n;
        if (read_head(r, &major, &info, &n) < 0)
            return NULL;
        if (major != 2 || n > (uint64_t)(r->len - r->pos)) {
            raise_at(MalformedError, inner, "malformed CBOR: a bignum tag wraps a byte string");
            return NULL;
        }
        const uint8_t *p = r->data + r->pos;
        uint64_t skip = 0;
        while (skip < n && p[skip] == 0)
            skip++;
        /* v < 2^64 fits both ways: a tag 3 value -1 - v is then >= -2^64 */
        if (n - skip <= 8) {
            raise_at(NonCanonicalError, start, "not the canonical DAG-CBOR encoding (bignum tag over a 64-bit integer)");
        }
        else {
            raise_at(MalformedError, start, "integer outside [-2^64, 2^64-1] (bignum tags are not allowed)");
        }
        return NULL;
    }
    raise_at(MalformedError, start, "CBOR tag %llu is not allowed in DAG-CBOR (only 42)", (unsigned long long)tag);
    return NULL;
}

static PyObject *
decode_simple(Reader *r, int info, Py_ssize_t start)
{
    switch (info) {
    case 20:
        Py_RETURN_FALSE;
    case 21:
        Py_RETURN_TRUE;
    case 22:
        Py_RETURN_NONE;
    case 23:
        raise_at(MalformedError, start, "undefined is not allowed in DAG-CBOR");
        return NULL;
    case 24:
        if (r->pos >= r->len) {
            raise_at(MalformedError, start, "malformed CBOR: premature end of data");
            return NULL;
        }
        raise_at(MalformedError, start, "simple value %d is not allowed in DAG-CBOR", r->data[r->pos]);
        return NULL;
    case 25:
    case 26: {
        int n = info == 25 ? 2 : 4;
        if (r->len - r->pos < n) {
            raise_at(MalformedError, start, "malformed CBOR: premature end of data");
            return NULL;
        }
        const uint8_t *p = r->data + r->pos;
        int special = info == 25 ? (p[0] & 0x7c) == 0x7c
                                 : ((p[0] & 0x7f) == 0x7f && (p[1] & 0x80) == 0x80);
        if (special) {
            raise_at(MalformedError, start, "NaN and Infinity are not allowed in DAG-CBOR");
        }
        else {
            raise_at(NonCanonicalError, start, "not the canonical DAG-CBOR encoding (floats are 64-bit)");
        }
        return NULL;
    }
    case 27: {
        if (r->len - r->pos < 8) {
            raise_at(MalformedError, start, "malformed CBOR: premature end of data");
            return NULL;
        }
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++)
            bits = (bits << 8) | r->data[r->pos + i];
        double d;
        memcpy(&d, &bits, 8);
        if (!isfinite(d)) {
            raise_at(MalformedError, start, "NaN and Infinity are not allowed in DAG-CBOR");
            return NULL;
        }
        r->pos += 8;
        return PyFloat_FromDouble(d);
    }
    case 31:
        raise_at(MalformedError, start, "malformed CBOR: break outside an indefinite-length item");
        return NULL;
    default:
        if (info < 20) {
            raise_at(MalformedError, start, "simple value %d is not allowed in DAG-CBOR", info);
        }
        else {
            raise_at(MalformedError, start, "malformed CBOR: reserved additional information %d", info);
        }
        return NULL;
    }
}

static PyObject *
decode_item(Reader *r, int depth)
{
    Py_ssize_t start = r->pos;
    if (depth > r->max_depth) {
        raise_at(LimitExceededError, start, "nesting deeper than %d", r->max_depth);
        return NULL;
    }
    int major, info;
    uint64_t arg;
    if (read_head(r, &major, &info, &arg) < 0)
        return NULL;
    switch (major) {
    case 0:
        return PyLong_FromUnsignedLongLong(arg);
    case 1:
        return decode_negative(arg);
    case 2:
        if (arg > (uint64_t)(r->len - r->pos)) {
            raise_at(MalformedError, start, "malformed CBOR: premature end of data");
            return NULL;
        }
        r->pos += (Py_ssize_t)arg;
        return PyBytes_FromStringAndSize((const char *)r->data + r->pos - (Py_ssize_t)arg, (Py_ssize_t)arg);
    case 3:
        return decode_text(r, arg, start);
    case 4:
    case 5: {
        if (Py_EnterRecursiveCall(" while decoding DAG-CBOR"))
            return NULL;
        PyObject *out = major == 4 ? decode_array(r, arg, depth, start) : decode_map(r, arg, depth, start);
        Py_LeaveRecursiveCall();
        return out;
    }
    case 6:
        return decode_tag(r, arg, depth, start);
    default:
        return decode_simple(r, info, start);
    }
}

static PyObject *
sp_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(data, max_depth, max_length)");
        return NULL;
    }
    if (!configured())
        return NULL;
    long max_depth = PyLong_AsLong(args[1]);
    if (max_depth == -1 && PyErr_Occurred())
        return NULL;
    if (max_depth < 0 || max_depth > 100000) {
        PyErr_SetString(PyExc_ValueError, "max_depth out of range");
        return NULL;
    }
    Py_ssize_t max_length = PyLong_AsSsize_t(args[2]);
    if (max_length == -1 && PyErr_Occurred())
        return NULL;
    if (max_length < 0) {
        PyErr_SetString(PyExc_ValueError, "max_length out of range");
        return NULL;
    }
    /* Deeper than the reference ever accepts (its walk stops at 512), and a
     * C stack that stays small whatever the caller's limit. */
    if (max_depth > DECODE_MAX_DEPTH)
        max_depth = DECODE_MAX_DEPTH;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Reader r = {(const uint8_t *)view.buf, view.len, 0, (int)max_depth, max_length};
    PyObject *out = NULL;
    if (r.len == 0) {
        raise_at(MalformedError, -1, "empty input");
        goto done;
    }
    out = decode_item(&r, 0);
    if (out == NULL && PyErr_ExceptionMatches(PyExc_RecursionError)) {
        PyErr_Clear();
        raise_at(LimitExceededError, -1, "nesting too deep");
    }
    if (out != NULL && r.pos != r.len) {
        Py_CLEAR(out);
        raise_at(MalformedError, r.pos, "trailing bytes after the item");
    }
done:
    PyBuffer_Release(&view);
    return out;
}

/* ------------------------------------------------------------------ encode */

typedef struct {
    char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
} Writer;

static int
reserve(Writer *w, Py_ssize_t extra)
{
    if (w->len + extra <= w->cap)
        return 0;
    Py_ssize_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *buf = PyMem_Realloc(w->buf, (size_t)cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->buf = buf;
    w->cap = cap;
    return 0;
}

static int
write_head(Writer *w, int major, uint64_t arg)
{
    if (reserve(w, 9) < 0)
        return -1;
    uint8_t *p = (uint8_t *)w->buf + w->len;
    uint8_t m = (uint8_t)(major << 5);
    if (arg < 24) {
        p[0] = m | (uint8_t)arg;
        w->len += 1;
    }
    else if (arg <= 0xff) {
        p[0] = m | 24;
        p[1] = (uint8_t)arg;
        w->len += 2;
    }
    else if (arg <= 0xffff) {
        p[0] = m | 25;
        p[1] = (uint8_t)(arg >> 8);
        p[2] = (uint8_t)arg;
        w->len += 3;
    }
    else if (arg <= 0xffffffffULL) {
        p[0] = m | 26;
        for (int i = 0; i < 4; i++)
            p[1 + i] = (uint8_t)(arg >> (24 - 8 * i));
        w->len += 5;
    }
    else {
        p[0] = m | 27;
        for (int i = 0; i < 8; i++)
            p[1 + i] = (uint8_t)(arg >> (56 - 8 * i));
        w->len += 9;
    }
    return 0;
}

static int
write_raw(Writer *w, const void *data, Py_ssize_t n)
{
    if (reserve(w, n) < 0)
        return -1;
    memcpy(w->buf + w->len, data, (size_t)n);
    w->len += n;
    return 0;
}

static int
write_bytes(Writer *w, int major, const char *data, Py_ssize_t n)
{
    if (write_head(w, major, (uint64_t)n) < 0)
        return -1;
    return write_raw(w, data, n);
}

static int
encode_int(Writer *w, PyObject *value)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow == 0) {
        if (v >= 0)
            return write_head(w, 0, (uint64_t)v);
        return write_head(w, 1, (uint64_t)(-1 - v));
    }
    PyObject *magnitude;
    int major;
    if (overflow > 0) {
        Py_INCREF(value);
        magnitude = value;
        major = 0;
    }
    else {
        /* -1 - value */
        PyObject *minus_one = PyLong_FromLong(-1);
        if (minus_one == NULL)
            return -1;
        magnitude = PyNumber_Subtract(minus_one, value);
        Py_DECREF(minus_one);
        if (magnitude == NULL)
            return -1;
        major = 1;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(magnitude);
    Py_DECREF(magnitude);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        raise_at(EncodeError, -1, "integer %R outside the DAG-CBOR range", value);
        return -1;
    }
    return write_head(w, major, u);
}

static int
encode_float(Writer *w, double d)
{
    if (!isfinite(d)) {
        raise_at(EncodeError, -1, "NaN and Infinity are not allowed in DAG-CBOR");
        return -1;
    }
    if (reserve(w, 9) < 0)
        return -1;
    uint64_t bits;
    memcpy(&bits, &d, 8);
    uint8_t *p = (uint8_t *)w->buf + w->len;
    p[0] = 0xfb;
    for (int i = 0; i < 8; i++)
        p[1 + i] = (uint8_t)(bits >> (56 - 8 * i));
    w->len += 9;
    return 0;
}

typedef struct {
    const char *key;
    Py_ssize_t len;
    PyObject *keyobj;
    PyObject *value;
} Entry;

static int
entry_less(const Entry *a, const Entry *b)
{
    if (a->len != b->len)
        return a->len < b->len;
    return memcmp(a->key, b->key, (size_t)a->len) < 0;
}

static int
entry_cmp(const void *pa, const void *pb)
{
    const Entry *a = pa, *b = pb;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    return memcmp(a->key, b->key, (size_t)a->len);
}

static int encode_value(Writer *w, PyObject *value, int depth);

static int
encode_map(Writer *w, PyObject *map, int depth)
{
    Py_ssize_t n = PyDict_GET_SIZE(map);
    Entry small[16];
    Entry *entries = small;
    if (n > 16) {
        entries = PyMem_Malloc(sizeof(Entry) * (size_t)n);
        if (entries == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    int rc = -1;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    /* Hold references: encoding a value may run Python code (a CID's raw). */
    while (PyDict_Next(map, &pos, &key, &value)) {
        if (i >= n) {
            PyErr_SetString(PyExc_RuntimeError, "dict changed size during encoding");
            goto done;
        }
        if (!PyUnicode_CheckExact(key)) {
            raise_at(EncodeError, -1, "map key %R is not a text string", key);
            goto done;
        }
        Py_ssize_t klen;
        const char *k = PyUnicode_AsUTF8AndSize(key, &klen);
        if (k == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                PyErr_Clear();
                raise_at(EncodeError, -1, "map key is not valid Unicode text (a lone surrogate?)");
            }
            goto done;
        }
        Py_INCREF(key);
        Py_INCREF(value);
        entries[i].key = k;
        entries[i].len = klen;
        entries[i].keyobj = key;
        entries[i].value = value;
        i++;
    }
    if (i != n) {
        PyErr_SetString(PyExc_RuntimeError, "dict changed size during encoding");
        goto done;
    }
    if (n <= 16) {
        for (Py_ssize_t a = 1; a < n; a++) {
            Entry e = entries[a];
            Py_ssize_t b = a;
            while (b > 0 && entry_less(&e, &entries[b - 1])) {
                entries[b] = entries[b - 1];
                b--;
            }
            entries[b] = e;
        }
    }
    else {
        qsort(entries, (size_t)n, sizeof(Entry), entry_cmp);
    }
    if (write_head(w, 5, (uint64_t)n) < 0)
        goto done;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (write_bytes(w, 3, entries[j].key, entries[j].len) < 0)
            goto done;
        if (encode_value(w, entries[j].value, depth + 1) < 0)
            goto done;
    }
    rc = 0;
done:
    for (Py_ssize_t j = 0; j < i; j++) {
        Py_DECREF(entries[j].keyobj);
        Py_DECREF(entries[j].value);
    }
    if (entries != small)
        PyMem_Free(entries);
    return rc;
}

static int
encode_sequence(Writer *w, PyObject *seq, int depth)
{
    /* A list may change while its items run Python code (a dict subclass's
     * keys(), a garbage-collection callback): encode a tuple that holds a
     * reference to every item. A tuple cannot change. */
    PyObject *items;
    if (PyList_CheckExact(seq)) {
        items = PyList_AsTuple(seq);
        if (items == NULL)
            return -1;
    }
    else {
        Py_INCREF(seq);
        items = seq;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    int rc = write_head(w, 4, (uint64_t)n);
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++)
        rc = encode_value(w, PyTuple_GET_ITEM(items, i), depth + 1);
    Py_DECREF(items);
    return rc;
}

static int
encode_cid(Writer *w, PyObject *cid)
{
    PyObject *raw = PyObject_GetAttr(cid, str_raw);
    if (raw == NULL)
        return -1;
    int rc = -1;
    if (!PyBytes_Check(raw)) {
        raise_at(EncodeError, -1, "a CID's raw form must be bytes");
        goto done;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    static const uint8_t tag42[2] = {0xd8, 0x2a};
    static const uint8_t zero = 0;
    if (write_raw(w, tag42, 2) < 0 || write_head(w, 2, (uint64_t)n + 1) < 0 || write_raw(w, &zero, 1) < 0 ||
        write_raw(w, PyBytes_AS_STRING(raw), n) < 0)
        goto done;
    rc = 0;
done:
    Py_DECREF(raw);
    return rc;
}

static int
encode_value(Writer *w, PyObject *value, int depth)
{
    PyTypeObject *type = Py_TYPE(value);
    if (type == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(value, &n);
        if (s == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                PyErr_Clear();
                raise_at(EncodeError, -1, "text is not valid Unicode (a lone surrogate?)");
            }
            return -1;
        }
        return write_bytes(w, 3, s, n);
    }
    if (type == &PyDict_Type || type == &PyList_Type || type == &PyTuple_Type) {
        if (depth > ENCODE_MAX_DEPTH) {
            raise_at(EncodeError, -1, "value nested too deeply");
            return -1;
        }
        if (Py_EnterRecursiveCall(" while encoding DAG-CBOR"))
            return -1;
        int rc = type == &PyDict_Type ? encode_map(w, value, depth) : encode_sequence(w, value, depth);
        Py_LeaveRecursiveCall();
        return rc;
    }
    if (type == &PyLong_Type || type == &PyFloat_Type) {
        if (depth > ENCODE_MAX_DEPTH) { /* the reference counts numbers too */
            raise_at(EncodeError, -1, "value nested too deeply");
            return -1;
        }
        if (type == &PyLong_Type)
            return encode_int(w, value);
        return encode_float(w, PyFloat_AS_DOUBLE(value));
    }
    if (type == &PyBytes_Type)
        return write_bytes(w, 2, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    if (value == Py_None)
        return write_raw(w, "\xf6", 1);
    if (value == Py_True)
        return write_raw(w, "\xf5", 1);
    if (value == Py_False)
        return write_raw(w, "\xf4", 1);
    if ((PyObject *)type == CIDType)
        return encode_cid(w, value);
    /* Subclasses and look-alikes encode as their base kind, read the way the
     * reference reads them: a dict subclass by iterating it and indexing it
     * (OrderedDict, a class that overrides __iter__), bytes-like values as
     * bytes(value), numbers as int(value) / float(value). */
    if (depth > ENCODE_MAX_DEPTH) {
        raise_at(EncodeError, -1, "value nested too deeply");
        return -1;
    }
    if (PyDict_Check(value)) {
        PyObject *keys = PySequence_Tuple(value);
        if (keys == NULL)
            return -1;
        PyObject *plain = PyDict_New();
        int rc = plain == NULL ? -1 : 0;
        for (Py_ssize_t i = 0; rc == 0 && i < PyTuple_GET_SIZE(keys); i++) {
            PyObject *key = PyTuple_GET_ITEM(keys, i);
            if (!PyUnicode_CheckExact(key)) {
                raise_at(EncodeError, -1, "map key %R is not a text string", key);
                rc = -1;
                break;
            }
            PyObject *item = PyObject_GetItem(value, key);
            if (item == NULL) {
                rc = -1;
                break;
            }
            rc = PyDict_SetItem(plain, key, item);
            Py_DECREF(item);
        }
        if (rc == 0 && PyDict_GET_SIZE(plain) != PyTuple_GET_SIZE(keys)) {
            raise_at(EncodeError, -1, "a map that repeats a key");
            rc = -1;
        }
        if (rc == 0 && Py_EnterRecursiveCall(" while encoding DAG-CBOR"))
            rc = -1;
        else if (rc == 0) {
            rc = encode_map(w, plain, depth);
            Py_LeaveRecursiveCall();
        }
        Py_XDECREF(plain);
        Py_DECREF(keys);
        return rc;
    }
    if (PyByteArray_Check(value) || PyMemoryView_Check(value) || PyBytes_Check(value)) {
        PyObject *plain = PyBytes_FromObject(value);
        if (plain == NULL)
            return -1;
        int rc = write_bytes(w, 2, PyBytes_AS_STRING(plain), PyBytes_GET_SIZE(plain));
        Py_DECREF(plain);
        return rc;
    }
    if (PyLong_Check(value))
        return encode_int(w, value);
    if (PyFloat_Check(value))
        return encode_float(w, PyFloat_AsDouble(value));
    if (PyUnicode_Check(value)) {
        PyObject *plain = PyUnicode_FromObject(value);
        if (plain == NULL)
            return -1;
        int rc = encode_value(w, plain, depth);
        Py_DECREF(plain);
        return rc;
    }
    raise_at(EncodeError, -1, "cannot encode %s as DAG-CBOR", type->tp_name);
    return -1;
}

static PyObject *
sp_encode(PyObject *self, PyObject *value)
{
    if (!configured())
        return NULL;
    Writer w = {NULL, 0, 0};
    PyObject *out = NULL;
    if (encode_value(&w, value, 0) == 0)
        out = PyBytes_FromStringAndSize(w.buf, w.len);
    PyMem_Free(w.buf);
    return out;
}

/* ------------------------------------------------------------ lines_ok */

/* The fast path of kernel/document.py's line rules: lines_ok(lines) is True
 * exactly when _check_line finds nothing in any line; the Python code runs
 * whenever it is False and writes the problems. tests/kernel/test_speedups.py
 * holds the two to the same answer on generated lines. */

/* Sizes in UTF-8 bytes, as CDDL's .size on a text string means (spec section 5). */
#define MAX_TEXT 16000
#define MAX_SHORT 800

static PyObject *k_text, *k_qty, *k_unit, *k_unit_price, *k_amount, *k_ref, *k_ext;

/* -?(0|[1-9][0-9]{0,26})(\.[0-9]{1,12})? over the whole string */
static int
is_decimal(PyObject *s)
{
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s))
        return 0;
    const char *p = (const char *)PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), i = 0;
    if (i < n && p[i] == '-')
        i++;
    if (i >= n)
        return 0;
    if (p[i] == '0') {
        i++;
    }
    else if (p[i] >= '1' && p[i] <= '9') {
        Py_ssize_t start = i++;
        while (i < n && p[i] >= '0' && p[i] <= '9')
            i++;
        if (i - start > 27)
            return 0;
    }
    else {
        return 0;
    }
    if (i == n)
        return 1;
    if (p[i] != '.')
        return 0;
    Py_ssize_t start = ++i;
    while (i < n && p[i] >= '0' && p[i] <= '9')
        i++;
    return i == n && i - start >= 1 && i - start <= 12;
}

/* [a-z][a-z0-9_-]{0,39} */
static int
is_namespace(PyObject *s)
{
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s))
        return 0;
    const char *p = (const char *)PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n < 1 || n > 40 || p[0] < 'a' || p[0] > 'z')
        return 0;
    for (Py_ssize_t i = 1; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int
no_floats(PyObject *v, int depth)
{
    if (depth > 64)
        return 0; /* let the Python code decide */
    if (PyFloat_CheckExact(v))
        return 0;
    if (PyDict_CheckExact(v)) {
        Py_ssize_t pos = 0;
        PyObject *key, *item;
        while (PyDict_Next(v, &pos, &key, &item))
            if (!no_floats(item, depth + 1))
                return 0;
    }
    else if (PyList_CheckExact(v)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(v); i++)
            if (!no_floats(PyList_GET_ITEM(v, i), depth + 1))
                return 0;
    }
    return 1;
}

static int
ext_ok(PyObject *ext)
{
    if (!PyDict_CheckExact(ext))
        return 0;
    Py_ssize_t pos = 0;
    PyObject *ns, *fields;
    while (PyDict_Next(ext, &pos, &ns, &fields)) {
        if (!is_namespace(ns) || !PyDict_CheckExact(fields) || !no_floats(fields, 0))
            return 0;
    }
    return 1;
}

/* 1 when the str s is 1..limit bytes in UTF-8 (a surrogate counts 3, as Python's
 * "surrogatepass" writes it), without encoding it; stops counting past the limit. */
static int
utf8_size_ok(PyObject *s, Py_ssize_t limit)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n < 1 || n > limit)
        return 0;
    if (PyUnicode_IS_ASCII(s) || 4 * n <= limit)
        return 1;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < n && size <= limit; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        size += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    }
    return size <= limit;
}

/* None or absent, or text of 1..limit UTF-8 bytes */
static int
text_len_ok(PyObject *v, Py_ssize_t limit)
{
    if (v == NULL || v == Py_None)
        return 1;
    if (!PyUnicode_CheckExact(v))
        return 0;
    return utf8_size_ok(v, limit);
}

static int
line_ok(PyObject *line)
{
    if (!PyDict_CheckExact(line))
        return 0;
    Py_ssize_t pos = 0, known = 0;
    PyObject *key, *value;
    PyObject *text = NULL, *qty = NULL, *unit = NULL, *unit_price = NULL, *amount = NULL, *ref = NULL, *ext = NULL;
    int has_ext = 0;
    while (PyDict_Next(line, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return 0;
        /* the interned field names first (pointer equality), then by value */
        PyObject **slot = NULL;
        PyObject *names[7] = {k_text, k_qty, k_unit, k_unit_price, k_amount, k_ref, k_ext};
        PyObject **slots[7] = {&text, &qty, &unit, &unit_price, &amount, &ref, &ext};
        for (int i = 0; i < 7 && slot == NULL; i++)
            if (key == names[i])
                slot = slots[i];
        for (int i = 0; i < 7 && slot == NULL; i++) {
            int eq = PyUnicode_Compare(key, names[i]);
            if (eq == -1 && PyErr_Occurred())
                return -1;
            if (eq == 0)
                slot = slots[i];
        }
        if (slot == NULL)
            return 0; /* an unknown line field */
        *slot = value;
        if (slot == &ext)
            has_ext = 1;
        known++;
    }
    (void)known;
    if (text == NULL || !PyUnicode_CheckExact(text))
        return 0;
    if (!utf8_size_ok(text, MAX_TEXT))
        return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    int blank = 1;
    for (Py_ssize_t i = 0; i < n && blank; i++)
        if (!Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i)))
            blank = 0;
    if (blank)
        return 0;
    PyObject *decimals[3] = {qty, unit_price, amount};
    for (int i = 0; i < 3; i++)
        if (decimals[i] != NULL && decimals[i] != Py_None && !is_decimal(decimals[i]))
            return 0;
    if (!text_len_ok(unit, MAX_SHORT) || !text_len_ok(ref, MAX_SHORT))
        return 0;
    if (has_ext && !ext_ok(ext))
        return 0;
    return 1;
}

static PyObject *
sp_lines_ok(PyObject *self, PyObject *lines)
{
    if (!PyList_CheckExact(lines))
        Py_RETURN_FALSE;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lines); i++) {
        int ok = line_ok(PyList_GET_ITEM(lines, i));
        if (ok < 0)
            return NULL;
        if (!ok)
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* ---------------------------------------------------------- document_ok */

/* The fast path of kernel/document.py's document_problems: document_ok(doc,
 * kinds) is True only when document_problems(doc, kinds) is empty; it may
 * say False for a valid document it does not vouch for (a party not parsed
 * before, several prev links, non-ASCII digits in a time), and the Python
 * rules then decide and name the problems. The test holds it to that. */

static PyObject *doc_top_fields, *doc_kernel_kinds, *doc_responses, *doc_known_parties, *doc_cid_type;
static PyObject *k_v, *k_kind, *k_from, *k_to, *k_issued_at, *k_valid_until, *k_due, *k_thread, *k_prev,
    *k_user, *k_note, *k_currency, *k_total, *k_response, *k_lines, *k_order_response;

#define MAX_LINES 10000
#define MAX_PREV 64

static int
is_digit2(const char *p, int n)
{
    for (int i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return 0;
    return 1;
}

static int
num(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++)
        v = v * 10 + (p[i] - '0');
    return v;
}

/* \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{0,5}[1-9])?Z, ASCII digits, a real date and time */
static int
time_ok(PyObject *t)
{
    if (!PyUnicode_CheckExact(t) || !PyUnicode_IS_ASCII(t))
        return 0;
    const char *p = (const char *)PyUnicode_DATA(t);
    Py_ssize_t n = PyUnicode_GET_LENGTH(t);
    if (n < 20 || p[n - 1] != 'Z')
        return 0;
    if (!is_digit2(p, 4) || p[4] != '-' || !is_digit2(p + 5, 2) || p[7] != '-' || !is_digit2(p + 8, 2) ||
        p[10] != 'T' || !is_digit2(p + 11, 2) || p[13] != ':' || !is_digit2(p + 14, 2) || p[16] != ':' ||
        !is_digit2(p + 17, 2))
        return 0;
    if (n > 20) {
        /* \.\d{0,5}[1-9] before the Z */
        Py_ssize_t frac = n - 21; /* characters after the '.' */
        if (p[19] != '.' || frac < 1 || frac > 6 || !is_digit2(p + 20, (int)frac) || p[n - 2] == '0')
            return 0;
    }
    int year = num(p, 4), month = num(p + 5, 2), day = num(p + 8, 2);
    int hour = num(p + 11, 2), minute = num(p + 14, 2), second = num(p + 17, 2);
    if (year < 1 || month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59)
        return 0;
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    int limit = mdays[month - 1] + (month == 2 && leap);
    return day <= limit;
}

/* [a-z][a-z0-9_]{0,39}(\.[a-z][a-z0-9_]{0,39})?; *dotted tells whether it has the second part */
static int
kind_ok(PyObject *k, int *dotted)
{
    if (!PyUnicode_CheckExact(k) || !PyUnicode_IS_ASCII(k))
        return 0;
    const char *p = (const char *)PyUnicode_DATA(k);
    Py_ssize_t n = PyUnicode_GET_LENGTH(k), i = 0;
    *dotted = 0;
    for (int part = 0; part < 2; part++) {
        Py_ssize_t start = i;
        if (i >= n || p[i] < 'a' || p[i] > 'z')
            return 0;
        i++;
        while (i < n && ((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '_'))
            i++;
        if (i - start > 40)
            return 0;
        if (i == n)
            return 1;
        if (part == 0 && p[i] == '.') {
            *dotted = 1;
            i++;
            continue;
        }
        return 0;
    }
    return 0;
}

static int
known_party(PyObject *did)
{
    if (did == NULL || !PyUnicode_CheckExact(did))
        return 0;
    return PyDict_GetItemWithError(doc_known_parties, did) != NULL;
}

static int
document_ok(PyObject *doc, PyObject *extra)
{
    if (!PyDict_CheckExact(doc))
        return 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(doc, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return 0;
        int has = PySet_Contains(doc_top_fields, key);
        if (has <= 0)
            return has; /* 0: an unknown field; -1: error */
    }
    PyObject *v = PyDict_GetItemWithError(doc, k_v);
    if (v == NULL || !PyLong_CheckExact(v))
        return PyErr_Occurred() ? -1 : 0;
    int overflow = 0;
    if (PyLong_AsLongAndOverflow(v, &overflow) != 1 || overflow)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *kind = PyDict_GetItemWithError(doc, k_kind);
    int dotted;
    if (kind == NULL || !kind_ok(kind, &dotted))
        return PyErr_Occurred() ? -1 : 0;
    if (!dotted) {
        int in = PySet_Contains(doc_kernel_kinds, kind);
        if (in <= 0)
            return in;
    }
    else if (PySet_GET_SIZE(extra) > 0) {
        /* The caller passes only exact str members (kernel/document.py), so
         * the lookup runs no Python code; the kind is held all the same. */
        Py_INCREF(kind);
        int in = PySet_Contains(extra, kind);
        int same = PyDict_GetItemWithError(doc, k_kind) == kind;
        Py_DECREF(kind);
        if (in <= 0 || !same)
            return in < 0 || PyErr_Occurred() ? -1 : 0;
    }
    PyObject *from = PyDict_GetItemWithError(doc, k_from);
    PyObject *to = PyDict_GetItemWithError(doc, k_to);
    if (!known_party(from) || !known_party(to))
        return PyErr_Occurred() ? -1 : 0;
    int same = PyUnicode_Compare(from, to);
    if (same == 0 || (same == -1 && PyErr_Occurred()))
        return PyErr_Occurred() ? -1 : 0;
    PyObject *issued = PyDict_GetItemWithError(doc, k_issued_at);
    if (issued == NULL || !time_ok(issued))
        return PyErr_Occurred() ? -1 : 0;
    PyObject *times[2] = {k_valid_until, k_due};
    for (int i = 0; i < 2; i++) {
        PyObject *t = PyDict_GetItemWithError(doc, times[i]);
        if (t == NULL && PyErr_Occurred())
            return -1;
        if (t != NULL && !time_ok(t))
            return 0;
    }
    PyObject *thread = PyDict_GetItemWithError(doc, k_thread);
    PyObject *prev = PyDict_GetItemWithError(doc, k_prev);
    if (PyErr_Occurred())
        return -1;
    if (thread == Py_None)
        thread = NULL;
    if (prev == Py_None)
        prev = NULL;
    if (thread != NULL && (PyObject *)Py_TYPE(thread) != doc_cid_type)
        return 0;
    int has_prev = 0;
    if (prev != NULL) {
        if (!PyList_CheckExact(prev) || PyList_GET_SIZE(prev) > 1)
            return 0; /* several links: the Python rules check they are distinct */
        if (PyList_GET_SIZE(prev) == 1) {
            if ((PyObject *)Py_TYPE(PyList_GET_ITEM(prev, 0)) != doc_cid_type)
                return 0;
            has_prev = 1;
        }
    }
    if ((thread == NULL) != !has_prev)
        return 0;
    PyObject *ref = PyDict_GetItemWithError(doc, k_ref);
    PyObject *user = PyDict_GetItemWithError(doc, k_user);
    PyObject *note = PyDict_GetItemWithError(doc, k_note);
    if (PyErr_Occurred())
        return -1;
    if (!text_len_ok(ref, MAX_SHORT) || !text_len_ok(user, MAX_SHORT) || !text_len_ok(note, MAX_TEXT))
        return 0;
    PyObject *currency = PyDict_GetItemWithError(doc, k_currency);
    if (currency != NULL && currency != Py_None) {
        if (!PyUnicode_CheckExact(currency) || !PyUnicode_IS_ASCII(currency) ||
            PyUnicode_GET_LENGTH(currency) != 3)
            return 0;
        const char *c = (const char *)PyUnicode_DATA(currency);
        for (int i = 0; i < 3; i++)
            if (c[i] < 'A' || c[i] > 'Z')
                return 0;
    }
    PyObject *total = PyDict_GetItemWithError(doc, k_total);
    if (total != NULL && !is_decimal(total))
        return 0;
    PyObject *response = PyDict_GetItemWithError(doc, k_response);
    if (PyErr_Occurred())
        return -1;
    int is_response = PyUnicode_Compare(kind, k_order_response) == 0;
    if (is_response) {
        if (response == NULL || !PyUnicode_CheckExact(response))
            return 0;
        int in = PySet_Contains(doc_responses, response);
        if (in <= 0)
            return in;
    }
    else if (response != NULL && response != Py_None) {
        return 0;
    }
    PyObject *lines = PyDict_GetItemWithError(doc, k_lines);
    if (lines != NULL && lines != Py_None) {
        if (!PyList_CheckExact(lines) || PyList_GET_SIZE(lines) > MAX_LINES)
            return 0;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lines); i++) {
            int ok = line_ok(PyList_GET_ITEM(lines, i));
            if (ok <= 0)
                return ok;
        }
    }
    PyObject *ext = PyDict_GetItemWithError(doc, k_ext);
    if (ext != NULL && !ext_ok(ext))
        return 0;
    return PyErr_Occurred() ? -1 : 1;
}

static PyObject *
sp_document_ok(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "document_ok(doc, kinds)");
        return NULL;
    }
    if (doc_top_fields == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "kernel._speedups.configure_documents() was not called");
        return NULL;
    }
    if (!PyFrozenSet_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "document_ok: kinds must be a frozenset");
        return NULL;
    }
    int ok = document_ok(args[0], args[1]);
    if (ok < 0)
        return NULL;
    return PyBool_FromLong(ok);
}

static PyObject *
sp_configure_documents(PyObject *self, PyObject *args)
{
    PyObject *top, *kinds, *responses, *known, *cid_type;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O:configure_documents", &PyFrozenSet_Type, &top, &PyFrozenSet_Type,
                          &kinds, &PyFrozenSet_Type, &responses, &PyDict_Type, &known, &cid_type))
        return NULL;
    Py_INCREF(top);
    Py_XSETREF(doc_top_fields, top);
    Py_INCREF(kinds);
    Py_XSETREF(doc_kernel_kinds, kinds);
    Py_INCREF(responses);
    Py_XSETREF(doc_responses, responses);
    Py_INCREF(known);
    Py_XSETREF(doc_known_parties, known);
    Py_INCREF(cid_type);
    Py_XSETREF(doc_cid_type, cid_type);
    Py_RETURN_NONE;
}

/* ----------------------------------------------- fixed-shape fast paths */

/* The kernel's signed wrapper and envelope always have the same shape. These
 * read exactly that shape in its canonical form and return its parts, or
 * None for anything else, which then takes the general decoder and its
 * checks: the same values, the same errors. Only a failed allocation raises. */

/* 1 when the next item is the text key `want`; 0 (no error set) otherwise. */
static int
expect_key(Reader *r, const char *want, Py_ssize_t n)
{
    int major, info;
    uint64_t arg;
    if (read_head(r, &major, &info, &arg) < 0) {
        PyErr_Clear();
        return 0;
    }
    if (major != 3 || arg != (uint64_t)n || r->len - r->pos < n || memcmp(r->data + r->pos, want, (size_t)n) != 0)
        return 0;
    r->pos += n;
    return 1;
}

/* The head of the next item, if it has major type `want`: 1, or 0 (no error set). */
static int
expect_head(Reader *r, int want, uint64_t *arg)
{
    int major, info;
    if (read_head(r, &major, &info, arg) < 0) {
        PyErr_Clear();
        return 0;
    }
    return major == want;
}

/* A byte string: a new reference; Py_None (new reference) when the next item is
 * not one; NULL only on a failed allocation. */
static PyObject *
expect_bytes(Reader *r)
{
    uint64_t n;
    if (!expect_head(r, 2, &n) || n > (uint64_t)(r->len - r->pos))
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize((const char *)r->data + r->pos, (Py_ssize_t)n);
    r->pos += (Py_ssize_t)n;
    return out;
}

/* Start reading `obj` (exact bytes) as a map of `entries` entries whose first
 * key is `key`: 1 with the reader at the first value, 0 for anything else. */
static int
begin_map(PyObject *obj, Reader *r, uint64_t entries, const char *key, Py_ssize_t key_len)
{
    if (!PyBytes_CheckExact(obj))
        return 0;
    *r = (Reader){(const uint8_t *)PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj), 0, 2, 16};
    uint64_t n;
    return expect_head(r, 5, &n) && n == entries && expect_key(r, key, key_len);
}

static PyObject *
sp_signed_parts(PyObject *self, PyObject *raw)
{
    Reader r;
    uint64_t n;
    PyObject *sig = NULL, *body = NULL, *signer = NULL;
    if (!begin_map(raw, &r, 3, "sig", 3))
        Py_RETURN_NONE;
    if ((sig = expect_bytes(&r)) == NULL || sig == Py_None)
        return sig;
    if (!expect_key(&r, "body", 4))
        goto none;
    if ((body = expect_bytes(&r)) == NULL)
        goto fail;
    if (body == Py_None || !expect_key(&r, "signer", 6) || !expect_head(&r, 3, &n))
        goto none;
    if ((signer = decode_text(&r, n, r.pos)) == NULL) {
        if (!PyErr_ExceptionMatches(MalformedError))
            goto fail;
        PyErr_Clear();
        goto none;
    }
    if (r.pos != r.len)
        goto none;
    return Py_BuildValue("(NNN)", sig, body, signer);
none:
    Py_XDECREF(sig);
    Py_XDECREF(body);
    Py_XDECREF(signer);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(sig);
    Py_XDECREF(body);
    return NULL;
}

static PyObject *
sp_envelope_parts(PyObject *self, PyObject *block)
{
    Reader r;
    uint64_t count, version;
    PyObject *c = NULL, *nonce = NULL, *slots = NULL;
    if (!begin_map(block, &r, 4, "c", 1))
        Py_RETURN_NONE;
    if ((c = expect_bytes(&r)) == NULL || c == Py_None)
        return c;
    if (!expect_key(&r, "n", 1))
        goto none;
    if ((nonce = expect_bytes(&r)) == NULL)
        goto fail;
    if (nonce == Py_None || !expect_key(&r, "s", 1) || !expect_head(&r, 4, &count) || count > 16)
        goto none;
    if ((slots = PyList_New((Py_ssize_t)count)) == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)count; i++) {
        PyObject *slot = expect_bytes(&r);
        if (slot == NULL)
            goto fail;
        PyList_SET_ITEM(slots, i, slot); /* None included: the list owns it either way */
        if (slot == Py_None)
            goto none;
    }
    if (!expect_key(&r, "v", 1) || !expect_head(&r, 0, &version) || version != 1 || r.pos != r.len)
        goto none;
    return Py_BuildValue("(NNN)", c, nonce, slots);
none:
    Py_XDECREF(c);
    Py_XDECREF(nonce);
    Py_XDECREF(slots);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(c);
    Py_XDECREF(nonce);
    Py_XDECREF(slots);
    return NULL;
}

/* --------------------------------------------------------------- configure */

static PyObject *
sp_configure(PyObject *self, PyObject *args)
{
    PyObject *cid_type, *from_bytes, *malformed, *noncanonical, *limit, *encode_error;
    if (!PyArg_ParseTuple(args, "OOOOOO:configure", &cid_type, &from_bytes, &malformed, &noncanonical, &limit,
                          &encode_error))
        return NULL;
    if (!PyType_Check(cid_type) || !PyCallable_Check(from_bytes)) {
        PyErr_SetString(PyExc_TypeError, "configure(CID, CID.from_bytes, Malformed, NonCanonical, Limit, Encode)");
        return NULL;
    }
    Py_INCREF(cid_type);
    Py_XSETREF(CIDType, cid_type);
    Py_INCREF(from_bytes);
    Py_XSETREF(cid_from_bytes, from_bytes);
    Py_INCREF(malformed);
    Py_XSETREF(MalformedError, malformed);
    Py_INCREF(noncanonical);
    Py_XSETREF(NonCanonicalError, noncanonical);
    Py_INCREF(limit);
    Py_XSETREF(LimitExceededError, limit);
    Py_INCREF(encode_error);
    Py_XSETREF(EncodeError, encode_error);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", sp_configure, METH_VARARGS,
     "configure(CID, cid_from_bytes, MalformedError, NonCanonicalError, LimitExceededError, EncodeError)"},
    {"decode", (PyCFunction)(void (*)(void))sp_decode, METH_FASTCALL,
     "decode(data, max_depth, max_length): one canonical DAG-CBOR item spanning all of data"},
    {"encode", sp_encode, METH_O, "encode(value): the canonical DAG-CBOR bytes of value"},
    {"lines_ok", sp_lines_ok, METH_O, "lines_ok(lines): True when no document line breaks a kernel rule"},
    {"document_ok", (PyCFunction)(void (*)(void))sp_document_ok, METH_FASTCALL,
     "document_ok(doc, kinds): True only when no kernel rule is broken (False: ask the Python rules)"},
    {"signed_parts", sp_signed_parts, METH_O,
     "signed_parts(raw): (sig, body, signer) of a canonical signed wrapper, else None"},
    {"envelope_parts", sp_envelope_parts, METH_O,
     "envelope_parts(block): (c, n, slots) of a canonical envelope, else None"},
    {"configure_documents", sp_configure_documents, METH_VARARGS,
     "configure_documents(top_fields, kernel_kinds, responses, known_parties, CID)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kernel._speedups",
    "The kernel's strict DAG-CBOR codec in C (the reference is kernel/dagcbor.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_raw = PyUnicode_InternFromString("raw");
    str_offset = PyUnicode_InternFromString("offset");
    if (str_raw == NULL || str_offset == NULL)
        return NULL;
    k_text = PyUnicode_InternFromString("text");
    k_qty = PyUnicode_InternFromString("qty");
    k_unit = PyUnicode_InternFromString("unit");
    k_unit_price = PyUnicode_InternFromString("unit_price");
    k_amount = PyUnicode_InternFromString("amount");
    k_ref = PyUnicode_InternFromString("ref");
    k_ext = PyUnicode_InternFromString("ext");
    if (!k_text || !k_qty || !k_unit || !k_unit_price || !k_amount || !k_ref || !k_ext)
        return NULL;
    const char *names[] = {"v", "kind", "from", "to", "issued_at", "valid_until", "due", "thread", "prev",
                           "user", "note", "currency", "total", "response", "lines", "order_response"};
    PyObject **slots[] = {&k_v, &k_kind, &k_from, &k_to, &k_issued_at, &k_valid_until, &k_due, &k_thread,
                          &k_prev, &k_user, &k_note, &k_currency, &k_total, &k_response, &k_lines,
                          &k_order_response};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *slots[i] = PyUnicode_InternFromString(names[i]);
        if (*slots[i] == NULL)
            return NULL;
    }
    /* Every field name the kernel and the node read: documents, lines,
     * envelopes, signed wrappers, notices, acks, batches. */
    const char *fields[] = {"v", "kind", "from", "to", "issued_at", "valid_until", "due", "thread", "prev",
                            "user", "note", "currency", "total", "response", "lines", "ref", "ext", "text",
                            "qty", "unit", "unit_price", "amount", "c", "n", "s", "sig", "body", "signer",
                            "cid", "nonce", "sent_at", "at", "by", "status", "digest", "reason", "notices",
                            "blocks", "acks"};
    known_keys = PyDict_New();
    if (known_keys == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        PyObject *name = PyUnicode_InternFromString(fields[i]);
        if (name == NULL || PyDict_SetItem(known_keys, name, name) < 0)
            return NULL;
        Py_DECREF(name); /* the dict holds it */
    }
    return PyModule_Create(&module);
}
