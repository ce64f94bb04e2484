/* Constant weights copied onto 2 MB pages.

   ONNX Runtime maps an external-data initializer from its file in 4 KB pages. Our GEMV streams every
   weight once a step; on the 2-core EPYC VM a plain read runs at 25 GB/s over 4 KB pages against 33 GB/s
   over 2 MB pages (fewer TLB misses, each a two-level walk under virtualization). The copies are
   bump-allocated in kernel-creation order (the graph's order, so one step reads them as one stream) from
   chunks advised MADV_HUGEPAGE, and the source pages are handed back to the kernel (MADV_PAGEOUT:
   file-backed pages are dropped, their content stays in the file; anonymous ones stay as they are). */
#ifndef MUSICGEN_HUGEPAGE_COPY_H
#define MUSICGEN_HUGEPAGE_COPY_H

#include <stddef.h>

typedef struct HugeChunk HugeChunk;
typedef struct {
  HugeChunk* chunk;
  void* data; /* 64-byte aligned */
  size_t size;
} HugeCopy;

/* Copies src[0, n) into *copy; 0, or -1 when no memory could be mapped (*copy untouched). */
int hugepage_copy(const void* src, size_t n, HugeCopy* copy);
/* Gives a copy's memory back: its pages at once, its chunk's address space with the chunk's last copy. */
void hugepage_release(const HugeCopy* copy);

#endif
