/* Calls the kernel through the i386 and x32 ABIs from a 64-bit process, for
 * the seccomp architecture tests (integration/tests/seccomp.rs). Built with
 * -static -no-pie so that `path` has a 32-bit address. Prints NAME=RESULT,
 * the raw return value (-errno on failure). */
#include <stdio.h>
#include <string.h>

static char path[] = "/tmp/abi-dir";

int main(int argc, char **argv) {
    long r = 0;
    if (argc < 2)
        return 2;
    if (!strcmp(argv[1], "i386-getpid")) {
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
    } else if (!strcmp(argv[1], "i386-mkdir")) {
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(39L), "b"(path), "c"(0755L) : "memory");
    } else if (!strcmp(argv[1], "x32-mkdir")) {
        __asm__ volatile("syscall"
                         : "=a"(r)
                         : "a"(0x40000000L | 83), "D"(path), "S"(0755L)
                         : "rcx", "r11", "memory");
    } else if (!strcmp(argv[1], "x86_64-mkdir")) {
        __asm__ volatile("syscall" : "=a"(r) : "a"(83L), "D"(path), "S"(0755L) : "rcx", "r11", "memory");
    } else {
        return 2;
    }
    printf("%s=%ld\n", argv[1], r);
    return 0;
}
