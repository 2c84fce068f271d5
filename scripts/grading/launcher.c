/* The launcher of a student's program in the sandbox: /work/bin/NN-name/PROG (a copy of
 * this program) runs /work/build/NN-name/PROG with the same arguments, after taking away
 * every capability (bounding, ambient, inheritable, permitted, effective) and setting
 * no_new_privs. It opens no file, so it works under any RLIMIT_NOFILE a test sets. */
#include <errno.h>
#include <limits.h>
#include <linux/capability.h>
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
    execv(target, argv);
    fprintf(stderr, "launcher: %s: %s\n", target, strerror(errno));
    return 127;
}
