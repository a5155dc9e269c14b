/*
 * TEST-ONLY stand-in for Windows' bcryptprimitives.dll, for Wine prefixes used by
 * `cargo xtask wine-test`. Never shipped: xtask builds it into the throwaway Wine prefix only,
 * never into dist/ or the installer.
 *
 * Why: Rust's standard library (1.78+) imports ProcessPrng from bcryptprimitives.dll, which
 * Wine 8 lacks, so every Rust exe dies at load with status c0000135. Real Windows 10/11 has it.
 *
 * ProcessPrng fills the buffer from RtlGenRandom (advapi32 SystemFunction036), whose length
 * is a 32-bit ULONG, hence the chunks. Like the real function it reports success; it returns
 * FALSE only if RtlGenRandom itself fails, so a broken RNG is never silent.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

#define CHUNK ((SIZE_T)1 << 30)

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = (ULONG)(len < CHUNK ? len : CHUNK);
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
