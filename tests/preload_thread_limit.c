/* preload_thread_limit.c — a sandbox-style program: it starts one worker,
 * then forbids new threads (a seccomp filter that fails clone and clone3
 * with EAGAIN, as a sandbox's RLIMIT_NPROC or a pids cgroup would), then
 * frees the worker's blocks: every free is remote and the batches ask for a
 * reclaimer pool that cannot be made (on whichever thread asks). Batches are then returned inline;
 * nothing may reach stderr (glibc prints nothing; until 2026-12-05 ferry
 * warned). preload_test.sh compares glibc and ferry, and with
 * FERRY_VERBOSE=1 expects ferry to say it could not start its threads (so
 * the run did reach that path). Prints "skipped" where the filter cannot be
 * installed. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_clone3
#define __NR_clone3 435
#endif

/* clone and clone3 fail with EAGAIN, on every thread of the process
 * (TSYNC); every other call, and every call of another architecture, is
 * allowed. */
static int ForbidNewThreads(void) {
  struct sock_filter filter[] = {
      /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 3), /* else to 5 */
      /* 2 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      /* 3 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 2, 0),          /* to 6 */
      /* 4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 1, 0),         /* to 6 */
      /* 5 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      /* 6 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EAGAIN & SECCOMP_RET_DATA)),
  };
  struct sock_fprog program = {sizeof filter / sizeof filter[0], filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &program);
}

enum { kBlocks = 5000, kRounds = 20 };
static void* g_blocks[kBlocks];
static pthread_barrier_t g_barrier;

static void* Allocate(void* unused) {
  (void)unused;
  for (int round = 0; round < kRounds; ++round) {
    for (int i = 0; i < kBlocks; ++i) {
      g_blocks[i] = malloc(64);
      if (g_blocks[i] == NULL) abort();
      *(int*)g_blocks[i] = round;
    }
    pthread_barrier_wait(&g_barrier); /* the blocks are ready */
    pthread_barrier_wait(&g_barrier); /* main has freed them */
  }
  return NULL;
}

int main(void) {
  pthread_barrier_init(&g_barrier, NULL, 2);
  pthread_t worker;
  if (pthread_create(&worker, NULL, Allocate, NULL) != 0) return 2;
  if (ForbidNewThreads() != 0) {
    puts("skipped: no seccomp filter");
    fflush(stdout);
    _exit(0); /* the worker waits at the barrier */
  }
  pthread_t probe;
  if (pthread_create(&probe, NULL, Allocate, NULL) == 0) {
    puts("skipped: the filter does not stop new threads");
    fflush(stdout);
    _exit(0); /* the probe would wait at the barrier */
  }
  for (int round = 0; round < kRounds; ++round) {
    pthread_barrier_wait(&g_barrier);
    for (int i = 0; i < kBlocks; ++i) {
      if (*(int*)g_blocks[i] != round) abort();
      free(g_blocks[i]);
    }
    pthread_barrier_wait(&g_barrier);
  }
  pthread_join(worker, NULL);
  puts("done");
  return 0;
}
