/* TEST ONLY, never shipped: Wine 8 lacks bcryptprimitives.dll, which Rust's
 * std imports for ProcessPrng (its random source on Windows 10+). This shim
 * forwards it to BCryptGenRandom, which Wine has, so test-windows.sh can run
 * the cross-built orfeas.exe under Wine. Real Windows has the DLL. */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG))) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
