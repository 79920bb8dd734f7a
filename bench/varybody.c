/* LD_PRELOAD shim for h2load: every request carries a different CheckRequest.
 *
 * h2load sends the file given with -d as every request's body, reading it with pread() at offset
 * 0 for each request. Under this shim a pread() of that file (matched by device and inode) is
 * answered from BENCH_BODIES instead: a file of BENCH_BODY_COUNT gRPC-framed bodies of
 * BENCH_BODY_SIZE bytes each (the -d file is the first of them), taken in turn, and a 16-hex-digit
 * request counter written over each marker "@@RQ@@@@@@@@@@@@" of a body (bench/bodies.py puts it
 * in x-request-id and http.id): no two bodies of one run are byte-for-byte equal.
 *
 * Built by bench/bodies.py with the system's C compiler: cc -O2 -shared -fPIC varybody.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static const char MARKER[] = "@@RQ@@@@@@@@@@@@";
#define MARKER_LEN 16

static int ready = 0;
static const unsigned char *bodies = NULL;
static size_t body_size = 0, body_count = 0;
#define MAX_MARKS 4
static long *marks = NULL; /* offsets of the markers in each body (MAX_MARKS each), -1: none */
static dev_t data_dev;
static ino_t data_ino;
static int data_fd = -1;
static size_t next_body = 0, current = 0;
static unsigned long long counter = 0;

static void setup(void) {
  ready = 1;
  const char *path = getenv("BENCH_BODIES");
  const char *size = getenv("BENCH_BODY_SIZE");
  const char *data = getenv("BENCH_DATA_FILE");
  if (!path || !size || !data) return;
  body_size = strtoul(size, NULL, 10);
  struct stat st;
  if (body_size == 0 || stat(data, &st) != 0) return;
  data_dev = st.st_dev;
  data_ino = st.st_ino;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return;
  if (fstat(fd, &st) != 0 || st.st_size < (off_t)body_size) { close(fd); return; }
  void *map = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return;
  body_count = st.st_size / body_size;
  marks = malloc(body_count * MAX_MARKS * sizeof(long));
  if (!marks) return;
  for (size_t i = 0; i < body_count; i++) {
    const unsigned char *b = (const unsigned char *)map + i * body_size;
    size_t from = 0;
    for (int k = 0; k < MAX_MARKS; k++) {
      const unsigned char *m = from < body_size ? memmem(b + from, body_size - from, MARKER, MARKER_LEN) : NULL;
      marks[i * MAX_MARKS + k] = m ? (long)(m - b) : -1;
      if (m) from = (size_t)(m - b) + MARKER_LEN;
    }
  }
  bodies = map;
}

static int is_data(int fd) {
  if (fd == data_fd) return 1;
  struct stat st;
  if (fstat(fd, &st) == 0 && st.st_dev == data_dev && st.st_ino == data_ino) {
    data_fd = fd;
    return 1;
  }
  return 0;
}

static ssize_t serve(void *buf, size_t n, off_t off) {
  if (off == 0) current = next_body++ % body_count;
  if ((size_t)off >= body_size) return 0;
  size_t len = body_size - (size_t)off;
  if (len > n) len = n;
  unsigned char tmp[65536];
  const unsigned char *src = bodies + current * body_size;
  const long *mk = marks + current * MAX_MARKS;
  if (mk[0] >= 0 && body_size <= sizeof tmp) {
    static const char hex[] = "0123456789abcdef";
    memcpy(tmp, src, body_size);
    if (off == 0) counter++;
    for (int k = 0; k < MAX_MARKS && mk[k] >= 0; k++) {
      unsigned long long c = counter;
      for (int i = MARKER_LEN - 1; i >= 0; i--, c >>= 4) tmp[mk[k] + i] = hex[c & 15];
    }
    src = tmp;
  }
  memcpy(buf, src + off, len);
  return (ssize_t)len;
}

typedef ssize_t (*pread_fn)(int, void *, size_t, off_t);

ssize_t pread(int fd, void *buf, size_t n, off_t off) {
  static pread_fn real = NULL;
  if (!real) real = (pread_fn)dlsym(RTLD_NEXT, "pread");
  if (!ready) setup();
  if (bodies && is_data(fd)) return serve(buf, n, off);
  return real(fd, buf, n, off);
}

ssize_t pread64(int fd, void *buf, size_t n, off_t off) {
  static pread_fn real = NULL;
  if (!real) real = (pread_fn)dlsym(RTLD_NEXT, "pread64");
  if (!ready) setup();
  if (bodies && is_data(fd)) return serve(buf, n, off);
  return real(fd, buf, n, off);
}
