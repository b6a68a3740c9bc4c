/*
 * Keyed BLAKE3 ids of many equal pieces at once: a database's pages.
 *
 * A database backup names every page by the keyed BLAKE3 of its bytes. Hashed one call per page,
 * a 4 KiB page gives the hash function four 1 KiB chunks to work on side by side, where the
 * processor's vectors hold sixteen, and each call pays the interpreter's cost besides. Here the
 * chunks of many pages are hashed together, sixteen at a time: chunk i of a page gets counter i,
 * then the parents of each page's chunks are formed level by level, the last one as the root.
 * The result is the same keyed BLAKE3 as the `blake3` package computes for each page on its own
 * (tests/unit/test_page_ids.py compares them for every page size SQLite allows).
 *
 * Written from the BLAKE3 specification (compression function, chunk and parent nodes, flags,
 * keyed mode). Built for the machine's best vector width where GCC can choose at run time. On
 * 256-bit vectors or wider (AVX2, AVX-512) it beats a call per page; lowered to 128-bit vectors it
 * is slower, so Python uses it only where `wide()` says (docs/performance.md, "The native page
 * hasher, on wide vectors only"). The build is optional: without it Python hashes page by page.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "little-endian only: Python hashes page by page elsewhere"
#endif

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define WIDEST __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WIDEST
#endif

typedef uint32_t v16 __attribute__((vector_size(64)));
#define LANES 16
#define CHUNK 1024
#define BATCH_CHUNKS 256 /* chunks hashed before their parents are formed: 8 KiB of chaining values */

enum { CHUNK_START = 1, CHUNK_END = 2, PARENT = 4, ROOT = 8, KEYED_HASH = 16 };

static const uint32_t IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                               0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define G(a, b, c, d, mx, my)  \
    a = a + b + (mx);          \
    d = ROTR(d ^ a, 16);       \
    c = c + d;                 \
    b = ROTR(b ^ c, 12);       \
    a = a + b + (my);          \
    d = ROTR(d ^ a, 8);        \
    c = c + d;                 \
    b = ROTR(b ^ c, 7);
#define ROUND(m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15) \
    G(s0, s4, s8, s12, m0, m1);                                                     \
    G(s1, s5, s9, s13, m2, m3);                                                     \
    G(s2, s6, s10, s14, m4, m5);                                                    \
    G(s3, s7, s11, s15, m6, m7);                                                    \
    G(s0, s5, s10, s15, m8, m9);                                                    \
    G(s1, s6, s11, s12, m10, m11);                                                  \
    G(s2, s7, s8, s13, m12, m13);                                                   \
    G(s3, s4, s9, s14, m14, m15);

/* One compression in each of the sixteen lanes; `cv` becomes the first half of the output. */
static inline __attribute__((always_inline)) void
compress16(v16 cv[8], const v16 m[16], v16 counter, v16 flags)
{
    v16 s0 = cv[0], s1 = cv[1], s2 = cv[2], s3 = cv[3], s4 = cv[4], s5 = cv[5], s6 = cv[6], s7 = cv[7];
    v16 s8 = (v16){} + IV[0], s9 = (v16){} + IV[1], s10 = (v16){} + IV[2], s11 = (v16){} + IV[3];
    v16 s12 = counter, s13 = (v16){}, s14 = (v16){} + 64u, s15 = flags;
    /* Round r takes the message words permuted r times by 2,6,3,10,7,0,4,13,1,11,12,5,9,14,15,8. */
    ROUND(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12], m[13], m[14], m[15]);
    ROUND(m[2], m[6], m[3], m[10], m[7], m[0], m[4], m[13], m[1], m[11], m[12], m[5], m[9], m[14], m[15], m[8]);
    ROUND(m[3], m[4], m[10], m[12], m[13], m[2], m[7], m[14], m[6], m[5], m[9], m[0], m[11], m[15], m[8], m[1]);
    ROUND(m[10], m[7], m[12], m[9], m[14], m[3], m[13], m[15], m[4], m[0], m[11], m[2], m[5], m[8], m[1], m[6]);
    ROUND(m[12], m[13], m[9], m[11], m[15], m[10], m[14], m[8], m[7], m[2], m[5], m[3], m[0], m[1], m[6], m[4]);
    ROUND(m[9], m[14], m[11], m[5], m[8], m[12], m[15], m[1], m[13], m[3], m[0], m[10], m[2], m[6], m[4], m[7]);
    ROUND(m[11], m[15], m[5], m[0], m[1], m[9], m[8], m[6], m[14], m[10], m[2], m[12], m[3], m[4], m[7], m[13]);
    cv[0] = s0 ^ s8;
    cv[1] = s1 ^ s9;
    cv[2] = s2 ^ s10;
    cv[3] = s3 ^ s11;
    cv[4] = s4 ^ s12;
    cv[5] = s5 ^ s13;
    cv[6] = s6 ^ s14;
    cv[7] = s7 ^ s15;
}

static inline uint32_t load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The chaining values of `count` whole chunks at `data`, chunk c with counter c % per_page (its
 * place in its page). A lane past the end repeats the last chunk and is not stored. */
WIDEST static void chunk_cvs(const uint32_t key[8], const uint8_t *data, size_t count, size_t per_page,
                             uint32_t (*cvs)[8])
{
    for (size_t first = 0; first < count; first += LANES) {
        const uint8_t *at[LANES];
        v16 counter;
        for (int l = 0; l < LANES; l++) {
            size_t c = first + l < count ? first + l : count - 1;
            at[l] = data + c * CHUNK;
            counter[l] = (uint32_t)(c % per_page);
        }
        v16 cv[8];
        for (int i = 0; i < 8; i++) cv[i] = (v16){} + key[i];
        for (int b = 0; b < 16; b++) {
            v16 m[16];
            for (int w = 0; w < 16; w++)
                for (int l = 0; l < LANES; l++) m[w][l] = load32(at[l] + 64 * b + 4 * w);
            uint32_t flags = KEYED_HASH | (b == 0 ? CHUNK_START : 0) | (b == 15 ? CHUNK_END : 0);
            if (b == 15 && per_page == 1) flags |= ROOT; /* a page of one chunk: the chunk is the root */
            compress16(cv, m, counter, (v16){} + flags);
        }
        for (size_t l = 0; l < LANES && first + l < count; l++)
            for (int i = 0; i < 8; i++) cvs[first + l][i] = cv[i][l];
    }
}

/* out[i] = parent(in[2i], in[2i + 1]) for `count` pairs; `out` may be `in` (each lane's pair is
 * read before any lane of the group is written, and later groups read further on). */
WIDEST static void parents(const uint32_t key[8], uint32_t (*in)[8], size_t count, uint32_t flags,
                           uint32_t (*out)[8])
{
    for (size_t first = 0; first < count; first += LANES) {
        v16 m[16], cv[8];
        for (int l = 0; l < LANES; l++) {
            size_t p = first + l < count ? first + l : count - 1;
            for (int w = 0; w < 8; w++) {
                m[w][l] = in[2 * p][w];
                m[8 + w][l] = in[2 * p + 1][w];
            }
        }
        for (int i = 0; i < 8; i++) cv[i] = (v16){} + key[i];
        compress16(cv, m, (v16){}, (v16){} + flags);
        for (size_t l = 0; l < LANES && first + l < count; l++)
            for (int i = 0; i < 8; i++) out[first + l][i] = cv[i][l];
    }
}

static void hash_pieces(const uint32_t key[8], const uint8_t *data, size_t n, size_t size, uint8_t *out)
{
    size_t per_page = size / CHUNK;
    size_t pages_per_batch = BATCH_CHUNKS / per_page;
    uint32_t cvs[BATCH_CHUNKS][8];
    for (size_t done = 0; done < n; done += pages_per_batch) {
        size_t pages = n - done < pages_per_batch ? n - done : pages_per_batch;
        size_t count = pages * per_page;
        chunk_cvs(key, data + done * size, count, per_page, cvs);
        /* A page's chunks sit side by side, so pairs never straddle two pages at any level. */
        for (size_t nodes = per_page; nodes > 1; nodes /= 2) {
            count /= 2;
            parents(key, cvs, count, KEYED_HASH | PARENT | (nodes == 2 ? ROOT : 0), cvs);
        }
        for (size_t p = 0; p < pages; p++) memcpy(out + (done + p) * 32, cvs[p], 32);
    }
}

PyDoc_STRVAR(page_ids_doc,
             "page_ids(key, data, size) -> bytes\n\n"
             "The keyed BLAKE3 ids (32 bytes each, end to end) of the whole `size`-byte pieces of\n"
             "`data`; a shorter piece at the end is left to the caller. `size` is a power of two\n"
             "from 1,024 to 65,536; `key` is 32 bytes.");

static PyObject *page_ids(PyObject *self, PyObject *args)
{
    Py_buffer key, data;
    Py_ssize_t size;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*n", &key, &data, &size)) return NULL;
    PyObject *result = NULL;
    if (key.len != 32) {
        PyErr_SetString(PyExc_ValueError, "the id key must be 32 bytes");
    } else if (size < CHUNK || size > 64 * CHUNK || (size & (size - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "the piece size must be a power of two from 1024 to 65536");
    } else {
        size_t n = (size_t)data.len / (size_t)size;
        result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 32));
        if (result != NULL) {
            uint32_t k[8];
            for (int i = 0; i < 8; i++) k[i] = load32((const uint8_t *)key.buf + 4 * i);
            uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
            Py_BEGIN_ALLOW_THREADS
            hash_pieces(k, (const uint8_t *)data.buf, n, (size_t)size, out);
            Py_END_ALLOW_THREADS
        }
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

PyDoc_STRVAR(wide_doc,
             "wide() -> bool\n\n"
             "Whether this processor runs the hasher on vectors of 256 bits or more (AVX2, AVX-512):\n"
             "there it beats hashing page by page; on narrower vectors it is slower.");

static PyObject *wide(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") || __builtin_cpu_supports("avx512f")) Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"page_ids", page_ids, METH_VARARGS, page_ids_doc},
    {"wide", wide, METH_NOARGS, wide_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pageids", "Keyed BLAKE3 ids of many equal pieces at once.", -1, methods,
};

PyMODINIT_FUNC PyInit__pageids(void) { return PyModule_Create(&module); }
