/* registry/tls/ssl_compat.c: lets Debian's CivetWeb 1.15 serve TLS with OpenSSL 3.
 *
 * CivetWeb loads OpenSSL at run time — dlopen("libssl.so"), then dlsym of each function
 * it uses — and one of them, SSL_get_peer_certificate, is only a macro in OpenSSL 3
 * (for SSL_get1_peer_certificate), so it would call NULL on the first HTTPS connection
 * (civetweb issue #1334). This library is built as "libssl.so" (that SONAME) and linked
 * into mlvault: glibc's dlopen("libssl.so") then returns it, and dlsym on it finds the
 * function below here and every other one in its dependency, the real libssl.so.3.
 * It is not a TLS implementation and adds nothing else. */
#include <openssl/ssl.h>

#undef SSL_get_peer_certificate
X509 *SSL_get_peer_certificate(const SSL *s);

X509 *SSL_get_peer_certificate(const SSL *s)
{
    return SSL_get1_peer_certificate(s);
}
