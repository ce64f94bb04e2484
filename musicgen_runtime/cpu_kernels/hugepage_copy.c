/* The store of hugepage_copy.h: chunks of 2 MB-aligned anonymous memory, reference-counted and unmapped
   when the last copy in them is released. Only the pages written are resident. */
#define _GNU_SOURCE
#include "hugepage_copy.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

#define HUGE_PAGE ((size_t)2 << 20)
#define CHUNK_BYTES ((size_t)256 << 20) /* address space; pages are only touched as copies fill it */

struct HugeChunk {
  char* base;
  size_t size, used;
  int refs;
};

static HugeChunk* current; /* the chunk new copies go to; NULL when it has none left */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static HugeChunk* chunk_new(size_t need) {
  size_t size = need > CHUNK_BYTES ? (need + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1) : CHUNK_BYTES;
  char* raw = mmap(NULL, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return NULL;
  char* base = (char*)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
  if (base > raw) munmap(raw, (size_t)(base - raw));
  if (raw + HUGE_PAGE > base) munmap(base + size, (size_t)(raw + HUGE_PAGE - base));
  madvise(base, size, MADV_HUGEPAGE); /* refused where the kernel has no transparent huge pages: 4 KB pages */
  HugeChunk* c = malloc(sizeof *c);
  if (!c) {
    munmap(base, size);
    return NULL;
  }
  *c = (HugeChunk){base, size, 0, 0};
  return c;
}

static void advise_pages(const void* p, size_t n, int advice) {
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + n) & ~(page - 1);
  if (b > a) madvise((void*)a, b - a, advice); /* a hint: refused on older kernels, harmless */
}

int hugepage_copy(const void* src, size_t n, HugeCopy* copy) {
  size_t need = (n + 63) & ~(size_t)63;
  pthread_mutex_lock(&lock);
  if (!current || current->size - current->used < need) {
    HugeChunk* c = chunk_new(need);
    if (!c) {
      pthread_mutex_unlock(&lock);
      return -1;
    }
    current = c; /* a full chunk lives on until its last copy is released */
  }
  *copy = (HugeCopy){current, current->base + current->used, n};
  current->used += need;
  current->refs++;
  pthread_mutex_unlock(&lock);
  memcpy(copy->data, src, n);
  advise_pages(src, n, MADV_PAGEOUT);
  return 0;
}

void hugepage_release(const HugeCopy* copy) {
  HugeChunk* c = copy->chunk;
  pthread_mutex_lock(&lock);
  if (--c->refs > 0) {
    advise_pages(copy->data, copy->size, MADV_DONTNEED); /* the chunk stays for its other copies */
  } else {
    if (c == current) current = NULL;
    munmap(c->base, c->size);
    free(c);
  }
  pthread_mutex_unlock(&lock);
}
