/* registry/jobs.c: jobs — WORK IN PROGRESS (being written this session). */
#include "registry/reg_internal.h"

int reg_job_authenticate(reg_ctx *r, const char *token, reg_user *out)
{
    (void)r, (void)token, (void)out;
    return core_err_set(MLV_EAUTH, "invalid token");
}
