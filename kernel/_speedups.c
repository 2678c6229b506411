/*
 * kernel._speedups: the kernel's strict DAG-CBOR codec in C.
 *
 * The same format as kernel/dagcbor.py (docs/spec.md, "DAG-CBOR"), which stays
 * the reference: it is used when this module is not built (or USAGI_PURE_PYTHON
 * is set), and the tests run both on the IPLD fixtures, the spec's reject
 * table and generated values and bytes, and require the same values, bytes and
 * error classes.
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
 * lines_ok() answers one question for kernel/_document.py: does any document
 * line break a kernel rule? (True: none does; False: the Python rules run and
 * name the problems.)
 *
 * How it is built (issue 15):
 *
 * - Multi-phase initialisation (PEP 489) with per-module state: everything
 *   configure() is given and every cached object lives in the module object,
 *   none in C globals, so each interpreter (and each module instance) has its
 *   own. The only static data are constant tables.
 * - Errors are raised once, at the boundary. The decoder and encoder record
 *   what went wrong in a small struct (a code, the byte offset, one number or
 *   object); the public function turns it into the Python exception. Nothing
 *   builds an exception mid-parse to throw it away. The one exception built
 *   by CPython itself that is replaced is the RecursionError of
 *   Py_EnterRecursiveCall, on a path only a caller already deep in Python
 *   recursion reaches.
 * - The kernel's limits are passed in by configure() from the Python
 *   constants (kernel/dagcbor.py, kernel/_document.py); none is written here.
 * - Validity depends on the arguments only: no process-wide cache is consulted.
 *
 * Nothing here touches files, sockets or the clock: it is part of the pure
 * kernel.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------ module state */

/* Map keys repeat (every line of every order has the same few), so short
 * keys are kept in a small direct-mapped cache of str objects and shared. */
#define KEY_CACHE_SIZE 512
#define KEY_CACHE_MAX_LEN 24

typedef struct {
    Py_ssize_t len;
    char bytes[KEY_CACHE_MAX_LEN];
    PyObject *str;
} KeyEntry;

/* The fields of a document line, in the order line_ok() reads them. */
enum { F_TEXT, F_QTY, F_UNIT, F_UNIT_PRICE, F_AMOUNT, F_REF, F_EXT, F_TAX_CATEGORY, F_TAX_RATE, N_LINE_FIELDS };
static const char *const line_field_names[N_LINE_FIELDS] = {"text", "qty", "unit", "unit_price", "amount",
                                                             "ref", "ext", "tax_category", "tax_rate"};

/* Every field name the kernel and the node read: documents, lines, envelopes,
 * signed wrappers, notices, acks, batches. A decoded key equal to one of
 * these becomes the interned str the Python code's literals are, so dict
 * look-ups by those literals compare by pointer. */
static const char *const known_field_names[] = {
    "v", "kind", "from", "to", "issued_at", "valid_until", "due", "thread", "prev", "user",
    "note", "currency", "total", "response", "lines", "ref", "ext", "text", "qty", "unit",
    "unit_price", "amount", "c", "n", "s", "sig", "body", "signer", "cid", "nonce",
    "sent_at", "at", "by", "status", "digest", "reason", "notices", "blocks", "acks",
    /* issue 19: the commercial fields of documents and lines */
    "tax_category", "tax_rate", "tax", "net", "tax_total", "rounding", "payment_terms", "parties",
    "category", "rate", "taxable", "name", "tax_id"};

typedef struct {
    /* configure(): the kernel's CID class, its parser and error classes */
    PyObject *cid_type;
    PyObject *cid_from_bytes;
    PyObject *malformed_error;
    PyObject *noncanonical_error;
    PyObject *limit_error;
    PyObject *encode_error;
    /* configure(): limits (0: not given yet) */
    int max_nesting;          /* depth the reference's walks stop at, both ways */
    Py_ssize_t max_text;      /* UTF-8 bytes of a line's text */
    Py_ssize_t max_short;     /* UTF-8 bytes of a line's unit, ref and tax_category */
    /* made when the module is executed */
    PyObject *str_raw;
    PyObject *str_offset;
    PyObject *max_u64;        /* 2**64 - 1 */
    PyObject *known_keys;     /* field name -> the interned str */
    PyObject *line_fields[N_LINE_FIELDS];
    KeyEntry key_cache[KEY_CACHE_SIZE];
} State;

static inline State *
get_state(PyObject *module)
{
    return (State *)PyModule_GetState(module);
}

/* ------------------------------------------------------------------ errors */

/* What went wrong, recorded where it was found and raised by the public
 * function. A code names the class and the message; `offset` is the byte it
 * concerns (-1: none); `arg` is the one number a message carries, `obj` (a
 * new reference) the one object. PY means a Python exception is already set
 * (memory, or the CID parser raised). */
typedef enum {
    OK = 0,
    PY,
    /* decode */
    D_EMPTY,
    D_EOF,
    D_INDEFINITE,
    D_INDEFINITE_MAJOR,
    D_RESERVED_INFO,
    D_NOT_SHORTEST,
    D_BAD_UTF8,
    D_MAP_LENGTH,
    D_ARRAY_LENGTH,
    D_DEPTH,
    D_RECURSION,
    D_KEY_NOT_TEXT,
    D_DUPLICATE_KEY,
    D_KEY_ORDER,
    D_TAG42_NOT_BYTES,
    D_TAG42_PREFIX,
    D_TRANSPARENT_TAG,
    D_BIGNUM_NOT_BYTES,
    D_BIGNUM_SMALL,
    D_BIGNUM_LARGE,
    D_TAG,
    D_UNDEFINED,
    D_SIMPLE,
    D_NOT_FINITE,
    D_SHORT_FLOAT,
    D_BREAK,
    D_TRAILING,
    /* encode */
    E_INT_RANGE,
    E_NOT_FINITE,
    E_KEY_TYPE,
    E_KEY_SURROGATE,
    E_TEXT_SURROGATE,
    E_CID_RAW,
    E_DEPTH,
    E_REPEATED_KEY,
    E_TYPE,
    E_DICT_CHANGED,
} Code;

typedef struct {
    Code code;
    Py_ssize_t offset;
    uint64_t arg;
    PyObject *obj;
} Problem;

static inline void
note(Problem *p, Code code, Py_ssize_t offset, uint64_t arg)
{
    p->code = code;
    p->offset = offset;
    p->arg = arg;
}

/* Raise cls(message, offset=offset); the message is consumed. */
static void
raise_with(PyObject *cls, PyObject *message, Py_ssize_t offset, State *st)
{
    if (message == NULL)
        return;
    PyObject *exc;
    if (offset >= 0) {
        PyObject *off = PyLong_FromSsize_t(offset);
        PyObject *kwargs = off ? PyDict_New() : NULL;
        if (kwargs == NULL || PyDict_SetItem(kwargs, st->str_offset, off) < 0) {
            Py_XDECREF(off);
            Py_XDECREF(kwargs);
            Py_DECREF(message);
            return;
        }
        Py_DECREF(off);
        PyObject *args = PyTuple_Pack(1, message);
        exc = args ? PyObject_Call(cls, args, kwargs) : NULL;
        Py_XDECREF(args);
        Py_DECREF(kwargs);
    }
    else {
        exc = PyObject_CallOneArg(cls, message);
    }
    Py_DECREF(message);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
}

/* The one place a decode problem becomes an exception. */
static void
raise_decode_problem(State *st, Problem *p, int max_depth, Py_ssize_t max_length)
{
    PyObject *cls = st->malformed_error, *msg = NULL;
    unsigned long long arg = (unsigned long long)p->arg;
    switch (p->code) {
    case OK:
    case PY:
        return;
    case D_EMPTY:
        msg = PyUnicode_FromString("empty input");
        break;
    case D_EOF:
        msg = PyUnicode_FromString("malformed CBOR: premature end of data");
        break;
    case D_INDEFINITE:
        cls = st->noncanonical_error;
        msg = PyUnicode_FromString("indefinite-length item");
        break;
    case D_INDEFINITE_MAJOR:
        msg = PyUnicode_FromFormat("malformed CBOR: indefinite length on major type %d", (int)arg);
        break;
    case D_RESERVED_INFO:
        msg = PyUnicode_FromFormat("malformed CBOR: reserved additional information %d", (int)arg);
        break;
    case D_NOT_SHORTEST:
        cls = st->noncanonical_error;
        msg = PyUnicode_FromString("not the canonical DAG-CBOR encoding");
        break;
    case D_BAD_UTF8:
        msg = PyUnicode_FromString("malformed CBOR: text is not valid UTF-8");
        break;
    case D_MAP_LENGTH:
    case D_ARRAY_LENGTH:
        cls = st->limit_error;
        msg = PyUnicode_FromFormat("%s of %llu entries (limit %zd)", p->code == D_MAP_LENGTH ? "map" : "array",
                                   arg, max_length);
        break;
    case D_DEPTH:
        cls = st->limit_error;
        msg = PyUnicode_FromFormat("nesting deeper than %d", max_depth);
        break;
    case D_RECURSION:
        cls = st->limit_error;
        msg = PyUnicode_FromString("nesting too deep");
        break;
    case D_KEY_NOT_TEXT:
        msg = PyUnicode_FromString("map key is not a text string");
        break;
    case D_DUPLICATE_KEY:
        msg = PyUnicode_FromString("duplicate map key");
        break;
    case D_KEY_ORDER:
        cls = st->noncanonical_error;
        msg = PyUnicode_FromString("map key out of canonical order");
        break;
    case D_TAG42_NOT_BYTES:
        msg = PyUnicode_FromString("tag 42 must wrap a byte string");
        break;
    case D_TAG42_PREFIX:
        msg = PyUnicode_FromString("tag 42 payload must start with the 0x00 multibase prefix");
        break;
    case D_TRANSPARENT_TAG:
        cls = st->noncanonical_error;
        msg = PyUnicode_FromFormat("not the canonical DAG-CBOR encoding (tag %llu around a value)", arg);
        break;
    case D_BIGNUM_NOT_BYTES:
        msg = PyUnicode_FromString("malformed CBOR: a bignum tag wraps a byte string");
        break;
    case D_BIGNUM_SMALL:
        cls = st->noncanonical_error;
        msg = PyUnicode_FromString("not the canonical DAG-CBOR encoding (bignum tag over a 64-bit integer)");
        break;
    case D_BIGNUM_LARGE:
        msg = PyUnicode_FromString("integer outside [-2^64, 2^64-1] (bignum tags are not allowed)");
        break;
    case D_TAG:
        msg = PyUnicode_FromFormat("CBOR tag %llu is not allowed in DAG-CBOR (only 42)", arg);
        break;
    case D_UNDEFINED:
        msg = PyUnicode_FromString("undefined is not allowed in DAG-CBOR");
        break;
    case D_SIMPLE:
        msg = PyUnicode_FromFormat("simple value %d is not allowed in DAG-CBOR", (int)arg);
        break;
    case D_NOT_FINITE:
        msg = PyUnicode_FromString("NaN and Infinity are not allowed in DAG-CBOR");
        break;
    case D_SHORT_FLOAT:
        cls = st->noncanonical_error;
        msg = PyUnicode_FromString("not the canonical DAG-CBOR encoding (floats are 64-bit)");
        break;
    case D_BREAK:
        msg = PyUnicode_FromString("malformed CBOR: break outside an indefinite-length item");
        break;
    case D_TRAILING:
        msg = PyUnicode_FromString("trailing bytes after the item");
        break;
    default:
        PyErr_Format(PyExc_SystemError, "kernel._speedups: decode problem %d", (int)p->code);
        return;
    }
    raise_with(cls, msg, p->offset, st);
}

/* The one place an encode problem becomes an exception; releases p->obj. */
static void
raise_encode_problem(State *st, Problem *p)
{
    PyObject *msg = NULL;
    switch (p->code) {
    case OK:
    case PY:
        break;
    case E_INT_RANGE:
        msg = PyUnicode_FromFormat("integer %R outside the DAG-CBOR range", p->obj);
        break;
    case E_NOT_FINITE:
        msg = PyUnicode_FromString("NaN and Infinity are not allowed in DAG-CBOR");
        break;
    case E_KEY_TYPE:
        msg = PyUnicode_FromFormat("map key %R is not a text string", p->obj);
        break;
    case E_KEY_SURROGATE:
        msg = PyUnicode_FromString("map key is not valid Unicode text (a lone surrogate?)");
        break;
    case E_TEXT_SURROGATE:
        msg = PyUnicode_FromString("text is not valid Unicode (a lone surrogate?)");
        break;
    case E_CID_RAW:
        msg = PyUnicode_FromString("a CID's raw form must be bytes");
        break;
    case E_DEPTH:
        msg = PyUnicode_FromString("value nested too deeply");
        break;
    case E_REPEATED_KEY:
        msg = PyUnicode_FromString("a map that repeats a key");
        break;
    case E_TYPE:
        msg = PyUnicode_FromFormat("cannot encode %s as DAG-CBOR", Py_TYPE(p->obj)->tp_name);
        break;
    case E_DICT_CHANGED:
        PyErr_SetString(PyExc_RuntimeError, "dict changed size during encoding");
        break;
    default:
        PyErr_Format(PyExc_SystemError, "kernel._speedups: encode problem %d", (int)p->code);
        break;
    }
    Py_CLEAR(p->obj);
    if (msg != NULL)
        raise_with(st->encode_error, msg, -1, st);
}

static int
configured(State *st)
{
    if (st->cid_type == NULL || st->max_nesting == 0) {
        PyErr_SetString(PyExc_RuntimeError, "kernel._speedups.configure() was not called");
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ decode */

typedef struct {
    State *st;
    const uint8_t *data;
    Py_ssize_t len;
    Py_ssize_t pos;
    int max_depth;
    Py_ssize_t max_length;
    Problem problem;
} Reader;

/* Failed: record the problem and return NULL (for the PyObject* functions). */
static PyObject *
fail(Reader *r, Code code, Py_ssize_t offset, uint64_t arg)
{
    note(&r->problem, code, offset, arg);
    return NULL;
}

/* A Python call failed (its exception is set). */
static PyObject *
python_failed(Reader *r)
{
    r->problem.code = PY;
    return NULL;
}

/* Read one head at r->pos. Returns 0 and sets *major, *info, *arg; -1 with the
 * problem recorded. Enforces the shortest form of the argument; indefinite
 * lengths are errors. Major type 7 heads are left to the caller (info is
 * returned as is). */
static int
read_head(Reader *r, int *major, int *info, uint64_t *arg)
{
    Py_ssize_t start = r->pos;
    if (r->pos >= r->len) {
        note(&r->problem, D_EOF, start, 0);
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
        if (*info == 31)
            note(&r->problem, *major >= 2 && *major <= 5 ? D_INDEFINITE : D_INDEFINITE_MAJOR, start,
                 (uint64_t)*major);
        else
            note(&r->problem, D_RESERVED_INFO, start, (uint64_t)*info);
        return -1;
    }
    int n = 1 << (*info - 24); /* 1, 2, 4 or 8 bytes */
    if (r->len - r->pos < n) {
        note(&r->problem, D_EOF, start, 0);
        return -1;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | r->data[r->pos + i];
    r->pos += n;
    static const uint64_t floor_of[4] = {24, 0x100, 0x10000, 0x100000000ULL};
    if (v < floor_of[*info - 24]) {
        note(&r->problem, D_NOT_SHORTEST, start, 0);
        return -1;
    }
    *arg = v;
    return 0;
}

static PyObject *decode_item(Reader *r, int depth);

static PyObject *
decode_negative(Reader *r, uint64_t arg)
{
    if (arg <= (uint64_t)INT64_MAX)
        return PyLong_FromLongLong(-1 - (long long)arg);
    PyObject *u = PyLong_FromUnsignedLongLong(arg);
    if (u == NULL)
        return python_failed(r);
    PyObject *neg = PyNumber_Negative(u);
    Py_DECREF(u);
    if (neg == NULL)
        return python_failed(r);
    PyObject *one = PyLong_FromLong(1);
    PyObject *out = one ? PyNumber_Subtract(neg, one) : NULL;
    Py_XDECREF(one);
    Py_DECREF(neg);
    return out ? out : python_failed(r);
}

/* 1 when s[0..n) is ASCII; eight bytes at a time. */
static int
ascii_only(const uint8_t *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ULL)
            return 0;
    }
    for (; i < n; i++)
        if (s[i] & 0x80)
            return 0;
    return 1;
}

/* 1 when s[0..n) is well-formed UTF-8 as Python's strict decoder reads it: no
 * overlong forms, no surrogates (U+D800..U+DFFF), nothing past U+10FFFF.
 * Checked here so that invalid text is a recorded problem, not a
 * UnicodeDecodeError built and then replaced. */
static int
utf8_valid(const uint8_t *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c < 0xC2) /* a continuation byte, or an overlong two-byte form */
            return 0;
        if (c < 0xE0) {
            if (n - i < 2 || (s[i + 1] & 0xC0) != 0x80)
                return 0;
            i += 2;
            continue;
        }
        if (c < 0xF0) {
            if (n - i < 3 || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80)
                return 0;
            if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] >= 0xA0))
                return 0; /* overlong, or a surrogate */
            i += 3;
            continue;
        }
        if (c < 0xF5) {
            if (n - i < 4 || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80)
                return 0;
            if ((c == 0xF0 && s[i + 1] < 0x90) || (c == 0xF4 && s[i + 1] >= 0x90))
                return 0; /* overlong, or past U+10FFFF */
            i += 4;
            continue;
        }
        return 0;
    }
    return 1;
}

/* A text string of n bytes at r->pos. ASCII (the field names, decimals,
 * DIDs, most text) is copied into a new str after one scan; anything else is
 * validated, then decoded by CPython. */
static PyObject *
decode_text(Reader *r, uint64_t n, Py_ssize_t start)
{
    if (n > (uint64_t)(r->len - r->pos))
        return fail(r, D_EOF, start, 0);
    const uint8_t *s = r->data + r->pos;
    PyObject *text;
    if (ascii_only(s, (Py_ssize_t)n)) {
        text = PyUnicode_New((Py_ssize_t)n, 127);
        if (text != NULL)
            memcpy(PyUnicode_1BYTE_DATA(text), s, (size_t)n);
    }
    else {
        if (!utf8_valid(s, (Py_ssize_t)n))
            return fail(r, D_BAD_UTF8, start, 0);
        text = PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, "strict");
    }
    if (text == NULL)
        return python_failed(r);
    r->pos += (Py_ssize_t)n;
    return text;
}

static PyObject *
decode_key(Reader *r, uint64_t n, Py_ssize_t start)
{
    if (n > KEY_CACHE_MAX_LEN || n > (uint64_t)(r->len - r->pos))
        return decode_text(r, n, start);
    const uint8_t *p = r->data + r->pos;
    uint32_t h = 2166136261u;
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    KeyEntry *e = &r->st->key_cache[(h ^ (h >> 16)) & (KEY_CACHE_SIZE - 1)];
    if (e->str != NULL && e->len == (Py_ssize_t)n && memcmp(e->bytes, p, (size_t)n) == 0) {
        r->pos += (Py_ssize_t)n;
        Py_INCREF(e->str);
        return e->str;
    }
    PyObject *key = decode_text(r, n, start);
    if (key == NULL)
        return NULL;
    /* A known field name becomes the interned str the Python code holds
     * ("text", "qty", ...). Other keys stay plain: interning text from the
     * network would make it immortal on CPython 3.12 (a leak anyone could
     * drive). A str key's hash cannot fail, so the look-up cannot either. */
    PyObject *known = PyDict_GetItemWithError(r->st->known_keys, key); /* borrowed */
    if (known != NULL) {
        Py_INCREF(known);
        Py_SETREF(key, known);
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return python_failed(r);
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
    if (n > (uint64_t)(r->len - r->pos) / 2)
        return fail(r, D_EOF, start, 0);
    if (n > (uint64_t)r->max_length)
        return fail(r, D_MAP_LENGTH, start, n);
    PyObject *map = PyDict_New();
    if (map == NULL)
        return python_failed(r);
    const uint8_t *prev_key = NULL;
    uint64_t prev_len = 0;
    for (uint64_t i = 0; i < n; i++) {
        Py_ssize_t key_start = r->pos;
        if (depth + 1 > r->max_depth) {
            fail(r, D_DEPTH, key_start, 0);
            goto error;
        }
        int major, info;
        uint64_t klen;
        if (read_head(r, &major, &info, &klen) < 0)
            goto error;
        if (major != 3) {
            fail(r, D_KEY_NOT_TEXT, key_start, 0);
            goto error;
        }
        const uint8_t *kbytes = r->data + r->pos;
        if (klen > (uint64_t)(r->len - r->pos)) {
            fail(r, D_EOF, key_start, 0);
            goto error;
        }
        if (prev_key != NULL) {
            int cmp;
            if (klen != prev_len)
                cmp = klen < prev_len ? -1 : 1;
            else
                cmp = memcmp(kbytes, prev_key, (size_t)klen);
            if (cmp == 0) {
                fail(r, D_DUPLICATE_KEY, key_start, 0);
                goto error;
            }
            if (cmp < 0) {
                fail(r, D_KEY_ORDER, key_start, 0);
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
        if (rc < 0) {
            python_failed(r);
            goto error;
        }
    }
    return map;
error:
    Py_DECREF(map);
    return NULL;
}

static PyObject *
decode_array(Reader *r, uint64_t n, int depth, Py_ssize_t start)
{
    if (n > (uint64_t)(r->len - r->pos))
        return fail(r, D_EOF, start, 0);
    if (n > (uint64_t)r->max_length)
        return fail(r, D_ARRAY_LENGTH, start, n);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL)
        return python_failed(r);
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
        if (depth + 1 > r->max_depth)
            return fail(r, D_DEPTH, r->pos, 0);
        Py_ssize_t inner = r->pos;
        int major, info;
        uint64_t n;
        if (read_head(r, &major, &info, &n) < 0)
            return NULL;
        if (major != 2)
            return fail(r, D_TAG42_NOT_BYTES, inner, 0);
        if (n > (uint64_t)(r->len - r->pos))
            return fail(r, D_EOF, inner, 0);
        const uint8_t *p = r->data + r->pos;
        if (n == 0 || p[0] != 0)
            return fail(r, D_TAG42_PREFIX, inner, 0);
        PyObject *raw = PyBytes_FromStringAndSize((const char *)p + 1, (Py_ssize_t)n - 1);
        if (raw == NULL)
            return python_failed(r);
        r->pos += (Py_ssize_t)n;
        /* The kernel's own parser (kernel/cid.py) judges the CID; what it
         * raises is the caller's error as it is. */
        PyObject *cid = PyObject_CallOneArg(r->st->cid_from_bytes, raw);
        Py_DECREF(raw);
        return cid ? cid : python_failed(r);
    }
    if (tag == 55799 || tag == 28 || tag == 256) {
        /* self-describe, "shareable", string-reference namespace: wrappers
         * around a value that DAG-CBOR spells without them */
        return fail(r, D_TRANSPARENT_TAG, start, tag);
    }
    if (tag == 2 || tag == 3) {
        /* A bignum: non-canonical when the value fits the 64-bit range DAG-CBOR
         * spells as a plain integer, malformed beyond it. */
        Py_ssize_t inner = r->pos;
        int major, info;
        uint64_t n;
        if (read_head(r, &major, &info, &n) < 0)
            return NULL;
        if (major != 2 || n > (uint64_t)(r->len - r->pos))
            return fail(r, D_BIGNUM_NOT_BYTES, inner, 0);
        const uint8_t *p = r->data + r->pos;
        uint64_t skip = 0;
        while (skip < n && p[skip] == 0)
            skip++;
        /* v < 2^64 fits both ways: a tag 3 value -1 - v is then >= -2^64 */
        return fail(r, n - skip <= 8 ? D_BIGNUM_SMALL : D_BIGNUM_LARGE, start, 0);
    }
    return fail(r, D_TAG, start, tag);
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
        return fail(r, D_UNDEFINED, start, 0);
    case 24:
        if (r->pos >= r->len)
            return fail(r, D_EOF, start, 0);
        return fail(r, D_SIMPLE, start, r->data[r->pos]);
    case 25:
    case 26: {
        int n = info == 25 ? 2 : 4;
        if (r->len - r->pos < n)
            return fail(r, D_EOF, start, 0);
        const uint8_t *p = r->data + r->pos;
        int special = info == 25 ? (p[0] & 0x7c) == 0x7c
                                 : ((p[0] & 0x7f) == 0x7f && (p[1] & 0x80) == 0x80);
        return fail(r, special ? D_NOT_FINITE : D_SHORT_FLOAT, start, 0);
    }
    case 27: {
        if (r->len - r->pos < 8)
            return fail(r, D_EOF, start, 0);
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++)
            bits = (bits << 8) | r->data[r->pos + i];
        double d;
        memcpy(&d, &bits, 8);
        if (!isfinite(d))
            return fail(r, D_NOT_FINITE, start, 0);
        r->pos += 8;
        PyObject *out = PyFloat_FromDouble(d);
        return out ? out : python_failed(r);
    }
    case 31:
        return fail(r, D_BREAK, start, 0);
    default:
        if (info < 20)
            return fail(r, D_SIMPLE, start, (uint64_t)info);
        return fail(r, D_RESERVED_INFO, start, (uint64_t)info);
    }
}

static PyObject *
decode_item(Reader *r, int depth)
{
    Py_ssize_t start = r->pos;
    if (depth > r->max_depth)
        return fail(r, D_DEPTH, start, 0);
    int major, info;
    uint64_t arg;
    if (read_head(r, &major, &info, &arg) < 0)
        return NULL;
    PyObject *out;
    switch (major) {
    case 0:
        out = PyLong_FromUnsignedLongLong(arg);
        return out ? out : python_failed(r);
    case 1:
        return decode_negative(r, arg);
    case 2:
        if (arg > (uint64_t)(r->len - r->pos))
            return fail(r, D_EOF, start, 0);
        r->pos += (Py_ssize_t)arg;
        out = PyBytes_FromStringAndSize((const char *)r->data + r->pos - (Py_ssize_t)arg, (Py_ssize_t)arg);
        return out ? out : python_failed(r);
    case 3:
        return decode_text(r, arg, start);
    case 4:
    case 5:
        /* The depth limit (at most configure()'s max_nesting) bounds the C
         * stack; this guards a caller already deep in recursion. */
        if (Py_EnterRecursiveCall(" while decoding DAG-CBOR"))
            return fail(r, D_RECURSION, -1, 0);
        out = major == 4 ? decode_array(r, arg, depth, start) : decode_map(r, arg, depth, start);
        Py_LeaveRecursiveCall();
        return out;
    case 6:
        return decode_tag(r, arg, depth, start);
    default:
        return decode_simple(r, info, start);
    }
}

static PyObject *
sp_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    State *st = get_state(module);
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(data, max_depth, max_length)");
        return NULL;
    }
    if (!configured(st))
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
    /* Never deeper than the reference accepts (its walk stops at
     * max_nesting), and a C stack that stays small whatever the caller asks. */
    if (max_depth > st->max_nesting)
        max_depth = st->max_nesting;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Reader r = {st, (const uint8_t *)view.buf, view.len, 0, (int)max_depth, max_length, {OK, -1, 0, NULL}};
    PyObject *out = NULL;
    if (r.len == 0) {
        note(&r.problem, D_EMPTY, -1, 0);
    }
    else {
        out = decode_item(&r, 0);
        if (out != NULL && r.pos != r.len) {
            Py_CLEAR(out);
            note(&r.problem, D_TRAILING, r.pos, 0);
        }
    }
    PyBuffer_Release(&view);
    if (out == NULL) {
        if (r.problem.code == D_RECURSION)
            PyErr_Clear(); /* CPython's RecursionError, replaced by the kernel's limit error */
        raise_decode_problem(st, &r.problem, r.max_depth, r.max_length);
    }
    return out;
}

/* ------------------------------------------------------------------ encode */

typedef struct {
    State *st;
    char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
    Problem problem;
} Writer;

/* Failed: record the problem (obj: a borrowed reference, kept) and return -1. */
static int
enc_fail(Writer *w, Code code, PyObject *obj)
{
    w->problem.code = code;
    Py_XINCREF(obj);
    Py_XSETREF(w->problem.obj, obj);
    return -1;
}

static int
enc_python_failed(Writer *w)
{
    w->problem.code = PY;
    return -1;
}

static int
reserve(Writer *w, Py_ssize_t extra)
{
    if (w->len + extra <= w->cap)
        return 0;
    Py_ssize_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return enc_python_failed(w);
        }
        cap *= 2;
    }
    char *buf = PyMem_Realloc(w->buf, (size_t)cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return enc_python_failed(w);
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

/* 1 when the exact str s holds a lone surrogate, which UTF-8 cannot carry.
 * Only strings of two- or four-byte kind can; looked at before encoding so
 * that it is a recorded problem, not a UnicodeEncodeError built and replaced. */
static int
has_surrogate(PyObject *s)
{
    int kind = PyUnicode_KIND(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *d = PyUnicode_2BYTE_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++)
            if ((d[i] & 0xF800) == 0xD800)
                return 1;
    }
    else if (kind == PyUnicode_4BYTE_KIND) {
        const Py_UCS4 *d = PyUnicode_4BYTE_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++)
            if ((d[i] & 0xFFFFF800u) == 0xD800)
                return 1;
    }
    return 0;
}

/* The UTF-8 of an exact str, or NULL with the problem recorded. */
static const char *
utf8_of(Writer *w, PyObject *s, Py_ssize_t *n, Code surrogate)
{
    if (PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND && has_surrogate(s)) {
        enc_fail(w, surrogate, NULL);
        return NULL;
    }
    const char *out = PyUnicode_AsUTF8AndSize(s, n);
    if (out == NULL)
        enc_python_failed(w);
    return out;
}

static int
encode_int(Writer *w, PyObject *value)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return enc_python_failed(w);
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
            return enc_python_failed(w);
        magnitude = PyNumber_Subtract(minus_one, value);
        Py_DECREF(minus_one);
        if (magnitude == NULL)
            return enc_python_failed(w);
        major = 1;
    }
    /* Compared before converting, so that a value out of range is a recorded
     * problem and not an OverflowError built and replaced. */
    int fits = PyObject_RichCompareBool(magnitude, w->st->max_u64, Py_LE);
    if (fits <= 0) {
        Py_DECREF(magnitude);
        return fits < 0 ? enc_python_failed(w) : enc_fail(w, E_INT_RANGE, value);
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(magnitude);
    Py_DECREF(magnitude);
    if (u == (unsigned long long)-1 && PyErr_Occurred())
        return enc_python_failed(w);
    return write_head(w, major, u);
}

static int
encode_float(Writer *w, double d)
{
    if (!isfinite(d))
        return enc_fail(w, E_NOT_FINITE, NULL);
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
            return enc_python_failed(w);
        }
    }
    int rc = -1;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    /* Hold references: encoding a value may run Python code (a CID's raw). */
    while (PyDict_Next(map, &pos, &key, &value)) {
        if (i >= n) {
            enc_fail(w, E_DICT_CHANGED, NULL);
            goto done;
        }
        if (!PyUnicode_CheckExact(key)) {
            enc_fail(w, E_KEY_TYPE, key);
            goto done;
        }
        Py_ssize_t klen;
        const char *k = utf8_of(w, key, &klen, E_KEY_SURROGATE);
        if (k == NULL)
            goto done;
        Py_INCREF(key);
        Py_INCREF(value);
        entries[i].key = k;
        entries[i].len = klen;
        entries[i].keyobj = key;
        entries[i].value = value;
        i++;
    }
    if (i != n) {
        enc_fail(w, E_DICT_CHANGED, NULL);
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
            return enc_python_failed(w);
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
    PyObject *raw = PyObject_GetAttr(cid, w->st->str_raw);
    if (raw == NULL)
        return enc_python_failed(w);
    int rc = -1;
    if (!PyBytes_Check(raw)) {
        enc_fail(w, E_CID_RAW, NULL);
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

/* A dict subclass, read the way the reference reads it: by iterating it and
 * indexing it (OrderedDict, a class that overrides __iter__). */
static int
encode_dict_like(Writer *w, PyObject *value, int depth)
{
    PyObject *keys = PySequence_Tuple(value);
    if (keys == NULL)
        return enc_python_failed(w);
    PyObject *plain = PyDict_New();
    int rc = plain == NULL ? enc_python_failed(w) : 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyTuple_GET_SIZE(keys); i++) {
        PyObject *key = PyTuple_GET_ITEM(keys, i);
        if (!PyUnicode_CheckExact(key)) {
            rc = enc_fail(w, E_KEY_TYPE, key);
            break;
        }
        PyObject *item = PyObject_GetItem(value, key);
        if (item == NULL) {
            rc = enc_python_failed(w);
            break;
        }
        if (PyDict_SetItem(plain, key, item) < 0)
            rc = enc_python_failed(w);
        Py_DECREF(item);
    }
    if (rc == 0 && PyDict_GET_SIZE(plain) != PyTuple_GET_SIZE(keys))
        rc = enc_fail(w, E_REPEATED_KEY, NULL);
    if (rc == 0) {
        if (Py_EnterRecursiveCall(" while encoding DAG-CBOR")) {
            rc = enc_python_failed(w);
        }
        else {
            rc = encode_map(w, plain, depth);
            Py_LeaveRecursiveCall();
        }
    }
    Py_XDECREF(plain);
    Py_DECREF(keys);
    return rc;
}

static int
encode_value(Writer *w, PyObject *value, int depth)
{
    PyTypeObject *type = Py_TYPE(value);
    if (type == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *s = utf8_of(w, value, &n, E_TEXT_SURROGATE);
        if (s == NULL)
            return -1;
        return write_bytes(w, 3, s, n);
    }
    if (type == &PyDict_Type || type == &PyList_Type || type == &PyTuple_Type) {
        if (depth > w->st->max_nesting)
            return enc_fail(w, E_DEPTH, NULL);
        if (Py_EnterRecursiveCall(" while encoding DAG-CBOR"))
            return enc_python_failed(w);
        int rc = type == &PyDict_Type ? encode_map(w, value, depth) : encode_sequence(w, value, depth);
        Py_LeaveRecursiveCall();
        return rc;
    }
    if (type == &PyLong_Type || type == &PyFloat_Type) {
        if (depth > w->st->max_nesting) /* the reference counts numbers too */
            return enc_fail(w, E_DEPTH, NULL);
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
    if ((PyObject *)type == w->st->cid_type)
        return encode_cid(w, value);
    /* Subclasses and look-alikes encode as their base kind, read the way the
     * reference reads them: a dict subclass by iterating it and indexing it,
     * bytes-like values as bytes(value), numbers as int(value) / float(value). */
    if (depth > w->st->max_nesting)
        return enc_fail(w, E_DEPTH, NULL);
    if (PyDict_Check(value))
        return encode_dict_like(w, value, depth);
    if (PyByteArray_Check(value) || PyMemoryView_Check(value) || PyBytes_Check(value)) {
        PyObject *plain = PyBytes_FromObject(value);
        if (plain == NULL)
            return enc_python_failed(w);
        int rc = write_bytes(w, 2, PyBytes_AS_STRING(plain), PyBytes_GET_SIZE(plain));
        Py_DECREF(plain);
        return rc;
    }
    if (PyLong_Check(value))
        return encode_int(w, value);
    if (PyFloat_Check(value)) {
        double d = PyFloat_AsDouble(value);
        if (d == -1.0 && PyErr_Occurred())
            return enc_python_failed(w);
        return encode_float(w, d);
    }
    if (PyUnicode_Check(value)) {
        PyObject *plain = PyUnicode_FromObject(value);
        if (plain == NULL)
            return enc_python_failed(w);
        int rc = encode_value(w, plain, depth);
        Py_DECREF(plain);
        return rc;
    }
    return enc_fail(w, E_TYPE, value);
}

static PyObject *
sp_encode(PyObject *module, PyObject *value)
{
    State *st = get_state(module);
    if (!configured(st))
        return NULL;
    Writer w = {st, NULL, 0, 0, {OK, -1, 0, NULL}};
    PyObject *out = NULL;
    if (encode_value(&w, value, 0) == 0) {
        out = PyBytes_FromStringAndSize(w.buf, w.len);
    }
    else {
        raise_encode_problem(st, &w.problem);
    }
    Py_XDECREF(w.problem.obj);
    PyMem_Free(w.buf);
    return out;
}

/* ------------------------------------------------------------ lines_ok */

/* The fast path of kernel/_document.py's line rules: lines_ok(lines) is True
 * exactly when _check_line finds nothing in any line; the Python code runs
 * whenever it is False and writes the problems. tests/kernel/test_speedups.py
 * holds the two to the same answer on generated lines. It decides from its
 * argument and the limits configure() was given, nothing else, and runs no
 * Python code: every value it looks at is an exact built-in type. */

/* Equal exact str objects: CPython keeps one representation per text (the
 * narrowest kind), so equal text is equal kind, length and data. */
static int
str_eq(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    if (n != PyUnicode_GET_LENGTH(b) || PyUnicode_KIND(a) != PyUnicode_KIND(b))
        return 0;
    return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}

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
line_ok(State *st, PyObject *line)
{
    if (!PyDict_CheckExact(line))
        return 0;
    PyObject *field[N_LINE_FIELDS] = {NULL};
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(line, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return 0;
        /* the interned field names first (pointer equality), then by value */
        int slot = -1;
        for (int i = 0; i < N_LINE_FIELDS && slot < 0; i++)
            if (key == st->line_fields[i])
                slot = i;
        for (int i = 0; i < N_LINE_FIELDS && slot < 0; i++)
            if (str_eq(key, st->line_fields[i]))
                slot = i;
        if (slot < 0)
            return 0; /* an unknown line field */
        field[slot] = value;
    }
    PyObject *text = field[F_TEXT];
    if (text == NULL || !PyUnicode_CheckExact(text) || !utf8_size_ok(text, st->max_text))
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
    const int decimals[4] = {F_QTY, F_UNIT_PRICE, F_AMOUNT, F_TAX_RATE};
    for (int i = 0; i < 4; i++) {
        PyObject *d = field[decimals[i]];
        if (d != NULL && d != Py_None && !is_decimal(d))
            return 0;
    }
    if (!text_len_ok(field[F_UNIT], st->max_short) || !text_len_ok(field[F_REF], st->max_short) ||
        !text_len_ok(field[F_TAX_CATEGORY], st->max_short))
        return 0;
    if (field[F_EXT] != NULL && !ext_ok(field[F_EXT]))
        return 0;
    return 1;
}

static PyObject *
sp_lines_ok(PyObject *module, PyObject *lines)
{
    State *st = get_state(module);
    if (st->max_text == 0 || st->max_short == 0) {
        PyErr_SetString(PyExc_RuntimeError, "kernel._speedups.configure(max_text=, max_short=) was not called");
        return NULL;
    }
    if (!PyList_CheckExact(lines))
        Py_RETURN_FALSE;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lines); i++)
        if (!line_ok(st, PyList_GET_ITEM(lines, i)))
            Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

/* --------------------------------------------------------------- configure */

/* Keep `value` in *slot when it was given. */
static void
keep(PyObject **slot, PyObject *value)
{
    if (value != NULL) {
        Py_INCREF(value);
        Py_XSETREF(*slot, value);
    }
}

/* A limit given as an int in 1..ceiling; -1 with an error set otherwise. */
static Py_ssize_t
limit_arg(PyObject *value, const char *name, Py_ssize_t ceiling)
{
    Py_ssize_t n = PyLong_AsSsize_t(value);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 1 || n > ceiling) {
        PyErr_Format(PyExc_ValueError, "configure: %s must be in 1..%zd", name, ceiling);
        return -1;
    }
    return n;
}

static PyObject *
sp_configure(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"cid_type", "cid_from_bytes", "malformed", "noncanonical", "limit_exceeded",
                               "encode_error", "max_nesting", "max_text", "max_short", NULL};
    PyObject *cid_type = NULL, *from_bytes = NULL, *malformed = NULL, *noncanonical = NULL, *limit = NULL,
             *encode_error = NULL, *max_nesting = NULL, *max_text = NULL, *max_short = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOOOOOOO:configure", keywords, &cid_type, &from_bytes,
                                     &malformed, &noncanonical, &limit, &encode_error, &max_nesting, &max_text,
                                     &max_short))
        return NULL;
    if ((cid_type != NULL && !PyType_Check(cid_type)) || (from_bytes != NULL && !PyCallable_Check(from_bytes))) {
        PyErr_SetString(PyExc_TypeError, "configure: cid_type must be a class, cid_from_bytes a callable");
        return NULL;
    }
    PyObject *classes[4] = {malformed, noncanonical, limit, encode_error};
    for (int i = 0; i < 4; i++) {
        if (classes[i] != NULL && !(PyType_Check(classes[i]) &&
                                    PyType_IsSubtype((PyTypeObject *)classes[i], (PyTypeObject *)PyExc_Exception))) {
            PyErr_SetString(PyExc_TypeError, "configure: the error classes must be Exception subclasses");
            return NULL;
        }
    }
    /* Ceilings of C's own, not the kernel's limits: a nesting the C stack
     * holds comfortably, sizes a Py_ssize_t holds. */
    Py_ssize_t nesting = 0, text = 0, short_ = 0;
    if (max_nesting != NULL && (nesting = limit_arg(max_nesting, "max_nesting", 4096)) < 0)
        return NULL;
    if (max_text != NULL && (text = limit_arg(max_text, "max_text", PY_SSIZE_T_MAX / 4)) < 0)
        return NULL;
    if (max_short != NULL && (short_ = limit_arg(max_short, "max_short", PY_SSIZE_T_MAX / 4)) < 0)
        return NULL;
    State *st = get_state(module);
    keep(&st->cid_type, cid_type);
    keep(&st->cid_from_bytes, from_bytes);
    keep(&st->malformed_error, malformed);
    keep(&st->noncanonical_error, noncanonical);
    keep(&st->limit_error, limit);
    keep(&st->encode_error, encode_error);
    if (nesting)
        st->max_nesting = (int)nesting;
    if (text)
        st->max_text = text;
    if (short_)
        st->max_short = short_;
    Py_RETURN_NONE;
}

static PyObject *
sp_limits(PyObject *module, PyObject *unused)
{
    State *st = get_state(module);
    return Py_BuildValue("{s:i,s:n,s:n}", "max_nesting", st->max_nesting, "max_text", st->max_text, "max_short",
                         st->max_short);
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))sp_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(*, cid_type, cid_from_bytes, malformed, noncanonical, limit_exceeded, encode_error,\n"
     "          max_nesting, max_text, max_short): set what is given (keywords only)"},
    {"limits", sp_limits, METH_NOARGS, "limits(): the limits configure() set (0: not set)"},
    {"decode", (PyCFunction)(void (*)(void))sp_decode, METH_FASTCALL,
     "decode(data, max_depth, max_length): one canonical DAG-CBOR item spanning all of data"},
    {"encode", sp_encode, METH_O, "encode(value): the canonical DAG-CBOR bytes of value"},
    {"lines_ok", sp_lines_ok, METH_O, "lines_ok(lines): True when no document line breaks a kernel rule"},
    {NULL, NULL, 0, NULL},
};

static int
sp_exec(PyObject *module)
{
    State *st = get_state(module);
    if ((st->str_raw = PyUnicode_InternFromString("raw")) == NULL ||
        (st->str_offset = PyUnicode_InternFromString("offset")) == NULL ||
        (st->max_u64 = PyLong_FromUnsignedLongLong(UINT64_MAX)) == NULL ||
        (st->known_keys = PyDict_New()) == NULL)
        return -1;
    for (size_t i = 0; i < sizeof(known_field_names) / sizeof(known_field_names[0]); i++) {
        PyObject *name = PyUnicode_InternFromString(known_field_names[i]);
        if (name == NULL)
            return -1;
        int rc = PyDict_SetItem(st->known_keys, name, name);
        Py_DECREF(name); /* the dict holds it */
        if (rc < 0)
            return -1;
    }
    for (int i = 0; i < N_LINE_FIELDS; i++)
        if ((st->line_fields[i] = PyUnicode_InternFromString(line_field_names[i])) == NULL)
            return -1;
    return 0;
}

static int
sp_traverse(PyObject *module, visitproc visit, void *arg)
{
    State *st = get_state(module);
    if (st == NULL)
        return 0;
    Py_VISIT(st->cid_type);
    Py_VISIT(st->cid_from_bytes);
    Py_VISIT(st->malformed_error);
    Py_VISIT(st->noncanonical_error);
    Py_VISIT(st->limit_error);
    Py_VISIT(st->encode_error);
    Py_VISIT(st->str_raw);
    Py_VISIT(st->str_offset);
    Py_VISIT(st->max_u64);
    Py_VISIT(st->known_keys);
    for (int i = 0; i < N_LINE_FIELDS; i++)
        Py_VISIT(st->line_fields[i]);
    for (int i = 0; i < KEY_CACHE_SIZE; i++)
        Py_VISIT(st->key_cache[i].str);
    return 0;
}

static int
sp_clear(PyObject *module)
{
    State *st = get_state(module);
    if (st == NULL)
        return 0;
    Py_CLEAR(st->cid_type);
    Py_CLEAR(st->cid_from_bytes);
    Py_CLEAR(st->malformed_error);
    Py_CLEAR(st->noncanonical_error);
    Py_CLEAR(st->limit_error);
    Py_CLEAR(st->encode_error);
    Py_CLEAR(st->str_raw);
    Py_CLEAR(st->str_offset);
    Py_CLEAR(st->max_u64);
    Py_CLEAR(st->known_keys);
    for (int i = 0; i < N_LINE_FIELDS; i++)
        Py_CLEAR(st->line_fields[i]);
    for (int i = 0; i < KEY_CACHE_SIZE; i++) {
        Py_CLEAR(st->key_cache[i].str);
        st->key_cache[i].len = 0;
    }
    return 0;
}

static void
sp_free(void *module)
{
    sp_clear((PyObject *)module);
}

/* Per-interpreter GIL (3.12+): safe, because every object this module holds
 * is in its own state (one per interpreter) and the only static data are
 * constant tables. Free-threading (3.13t) is NOT declared: the key cache is
 * written during decode without a lock, so such a build keeps the GIL on for
 * this module (CPython re-enables it on import and says so). */
static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, sp_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kernel._speedups",
    .m_doc = "The kernel's strict DAG-CBOR codec in C (the reference is kernel/dagcbor.py).",
    .m_size = sizeof(State),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = sp_traverse,
    .m_clear = sp_clear,
    .m_free = sp_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module_def);
}
