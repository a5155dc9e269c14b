/*
 * Inno Setup's Sign Tool under Wine, for `cargo xtask installer --sign`. Never shipped: xtask
 * builds it into <target>/wine/signhook/ and names it to ISCC on the command line only.
 *
 * Usage (what ISCC runs, $f being the file to sign): signhook.exe FILE
 * Environment: CMS_SIGN_HOOK_PORT, CMS_SIGN_HOOK_TOKEN (set by xtask for ISCC).
 *
 * Why: ISCC waits for its Sign Tool to finish. Under Wine a Linux program started from a Windows
 * one has no process handle to wait for ("WaitForSingleObject failed"), and Wine's pipes do not
 * reach it either, so ISCC cannot run osslsigncode itself. This program sends
 * "TOKEN FILE\n" to xtask's listener on 127.0.0.1:PORT, which signs FILE (a Windows path,
 * UTF-8) and answers "ok\n" or "error: WHY\n". The answer is printed; the exit code is 0 for
 * "ok", 1 for an error answer, 2 for bad usage, 3 when xtask cannot be reached.
 */
#include <winsock2.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE 8192

/* The environment variable `name` into `buf`; 0 when missing or too long. */
static int get_env(const char *name, char *buf, DWORD size)
{
    DWORD n = GetEnvironmentVariableA(name, buf, size);
    return n > 0 && n < size;
}

/* Sends all of `data`; 0 on failure. */
static int send_all(SOCKET s, const char *data, int len)
{
    while (len > 0) {
        int n = send(s, data, len, 0);
        if (n <= 0)
            return 0;
        data += n;
        len -= n;
    }
    return 1;
}

int wmain(int argc, wchar_t **argv)
{
    char token[256], port[16], line[MAX_LINE], reply[1024];
    WSADATA wsa;
    SOCKET s;
    struct sockaddr_in addr;
    int len, got = 0, n;

    if (argc != 2) {
        fputs("usage: signhook.exe FILE\n", stderr);
        return 2;
    }
    if (!get_env("CMS_SIGN_HOOK_PORT", port, sizeof port) ||
        !get_env("CMS_SIGN_HOOK_TOKEN", token, sizeof token)) {
        fputs("signhook: CMS_SIGN_HOOK_PORT and CMS_SIGN_HOOK_TOKEN must be set (by xtask)\n", stderr);
        return 2;
    }
    len = snprintf(line, sizeof line, "%s ", token);
    n = WideCharToMultiByte(CP_UTF8, 0, argv[1], -1, line + len, sizeof line - len - 1, NULL, NULL);
    if (n <= 0) {
        fputs("signhook: the file name is too long\n", stderr);
        return 2;
    }
    len += n - 1; /* n counts the terminating NUL */
    line[len++] = '\n';

    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0)
        return 3;
    s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s == INVALID_SOCKET || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        !send_all(s, line, len)) {
        fprintf(stderr, "signhook: cannot reach xtask on 127.0.0.1:%s (error %d)\n", port,
                WSAGetLastError());
        return 3;
    }
    while (got < (int)sizeof reply - 1 && (n = recv(s, reply + got, sizeof reply - 1 - got, 0)) > 0)
        got += n;
    reply[got] = '\0';
    closesocket(s);
    WSACleanup();
    fputs(reply, stdout);
    return strcmp(reply, "ok\n") == 0 ? 0 : 1;
}
