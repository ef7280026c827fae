/* repo/repo_internal.h: what repo's own files share and nothing outside repo/ sees —
 * the signing key as an OpenSSL object (for sign.c). Not part of the public API. */
#ifndef MLV_REPO_INTERNAL_H
#define MLV_REPO_INTERNAL_H

#include <openssl/evp.h>

#include "repo/repo.h"

/* The ECDSA P-256 private signing key; borrowed, valid while k lives. */
EVP_PKEY *repo_keys_signing_pkey(const repo_keys *k);

#endif
