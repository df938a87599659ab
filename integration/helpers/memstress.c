/* Rewrites one word of every page of a buffer, pass after pass, and checks
 * before each write that the page holds the previous pass: a guest write
 * that a live migration failed to carry shows as a page behind the rest
 * (integration/tests/migration.rs). Usage: memstress PAGES. Prints
 * "pass N" every 256 passes, "lost write: ..." and exits 1 on a stale
 * page. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#define PAGE 4096

int main(int argc, char **argv) {
    size_t pages = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
    volatile uint64_t *buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    for (uint64_t pass = 1;; pass++) {
        for (size_t p = 0; p < pages; p++) {
            volatile uint64_t *word = buf + p * (PAGE / sizeof(uint64_t));
            uint64_t seen = *word;
            if (seen != pass - 1) {
                printf("lost write: page %zu holds pass %llu in pass %llu\n", p,
                       (unsigned long long)seen, (unsigned long long)pass);
                fflush(stdout);
                return 1;
            }
            *word = pass;
        }
        if (pass % 256 == 0) {
            printf("pass %llu\n", (unsigned long long)pass);
            fflush(stdout);
        }
    }
}
