/* subreaper CMD [ARG...]: runs CMD as a child subreaper, so that whatever
 * CMD leaves behind (a process still running, or a zombie it never
 * reaped) is handed to us when CMD exits. Exits with CMD's status, or
 * prints "left behind: PID" and exits 99 when anything was left. */
#include <errno.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef __WALL
#define __WALL 0x40000000
#endif

int main(int argc, char **argv) {
  if (argc < 2 || prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return 98;
  pid_t cmd = fork();
  if (cmd < 0) return 98;
  if (cmd == 0) {
    execvp(argv[1], argv + 1);
    _exit(127);
  }
  int status = 0;
  if (waitpid(cmd, &status, 0) != cmd) return 98;
  /* Anything else is CMD's leftover, reparented to us. */
  int st;
  pid_t left = waitpid(-1, &st, __WALL | WNOHANG);
  if (left < 0 && errno == ECHILD)
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (left == 0) printf("left behind: a running process\n");
  else printf("left behind: pid %d\n", (int)left);
  return 99;
}
