/* The launcher of a student's program in the sandbox: /work/bin/NN-name/PROG (a copy of
 * this program) runs /work/build/NN-name/PROG with the same arguments, after taking away
 * every capability (bounding, ambient, inheritable, permitted, effective), setting
 * no_new_privs, and entering a Landlock domain of its own. The domain keeps each program
 * (and the processes it starts) apart from every process outside it: the kernel refuses
 * it ptrace access, so it cannot open /proc/PID/fd of the grader's processes or of the
 * other programs a test runs at the same time (under pytest-xdist, another test's). The
 * domain restricts nothing else: its one handled right, making block devices, is one no
 * program without capabilities has anyway. Where the kernel has no Landlock, or a seccomp
 * filter forbids it, the program runs without (lacking capabilities still keeps the
 * grader's own descriptors out of reach).
 * It opens no file, so it works under any RLIMIT_NOFILE a test sets. */
#include <errno.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char** argv) {
    (void)argc;
    static const char bin[] = "/work/bin/";
    char self[PATH_MAX];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) {
        perror("launcher: /proc/self/exe");
        return 126;
    }
    self[n] = '\0';
    if (strncmp(self, bin, sizeof bin - 1) != 0) {
        fprintf(stderr, "launcher: not under %s: %s\n", bin, self);
        return 126;
    }
    char target[PATH_MAX];
    snprintf(target, sizeof target, "/work/build/%s", self + sizeof bin - 1);
    for (int cap = 0; cap < 64; ++cap) {
        prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);  /* EINVAL past the last one */
    }
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) != 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("launcher: dropping capabilities");
        return 126;
    }
    const struct landlock_ruleset_attr ruleset = {.handled_access_fs = LANDLOCK_ACCESS_FS_MAKE_BLOCK};
    const long domain = syscall(SYS_landlock_create_ruleset, &ruleset, sizeof ruleset, 0);
    if (domain >= 0) {  /* else no Landlock here (or a seccomp filter forbids it) */
        syscall(SYS_landlock_restrict_self, domain, 0);
        close((int)domain);
    }
    execv(target, argv);
    fprintf(stderr, "launcher: %s: %s\n", target, strerror(errno));
    return 127;
}
