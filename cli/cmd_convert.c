/* cli/cmd_convert.c: `mlvault convert DIR|FILE.gguf -o OUT.gguf [--outtype T] [--json]` —
 * a Hugging Face folder or a GGUF file to GGUF (engine/convert.c), then a summary of
 * what was written, read back from the new file. Works on files only: no home, no
 * token. */
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "engine/engine.h"

static const cli_opt_spec SPEC[] = {{"output", 'o', true, false}, {"outtype", 0, true, false}};

static const char *USAGE_CONVERT =
    "usage: mlvault convert DIR|FILE.gguf -o OUT.gguf [--outtype auto|f32|f16|bf16|q8_0] [--json]";

static int parse_outtype(const char *s, int *out)
{
    static const struct {
        const char *name;
        int type;
    } types[] = {{"auto", ENG_OUT_AUTO},
                 {"f32", ENG_F32},
                 {"f16", ENG_F16},
                 {"bf16", ENG_BF16},
                 {"q8_0", ENG_Q8_0}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcasecmp(s, types[i].name)) {
            *out = types[i].type;
            return 0;
        }
    return core_err_set(MLV_EINVAL, "unknown --outtype '%s' (auto, f32, f16, bf16, q8_0)", s);
}

/* Reads the written file back: tensor count, bytes, tensors per type. */
static int summarise(const cli_args *a, const char *in, const char *out, bool hf, double secs)
{
    eng_gguf *g = NULL;
    int rc = eng_gguf_open_file(&g, out);
    if (rc) return rc;
    struct stat st;
    uint64_t size = stat(out, &st) == 0 ? (uint64_t)st.st_size : 0;
    size_t counts[64] = {0};
    uint64_t tensor_bytes = 0;
    for (size_t i = 0; i < eng_gguf_n_tensors(g); i++) {
        eng_gguf_tensor t;
        eng_gguf_tensor_info(g, i, &t);
        if (t.type >= 0 && t.type < 64) counts[t.type]++;
        tensor_bytes += t.size;
    }
    int64_t ftype = -1;
    eng_gguf_get_int(g, "general.file_type", &ftype);
    if (a->json) {
        json_t *types = json_object();
        for (int t = 0; t < 64; t++)
            if (counts[t])
                json_object_set_new(types, eng_type_name(t), json_integer((json_int_t)counts[t]));
        cli_print_json(json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:o,s:f}", "input", in, "output",
                                 out, "format", hf ? "safetensors" : "gguf", "tensors",
                                 (json_int_t)eng_gguf_n_tensors(g), "bytes", (json_int_t)size,
                                 "tensor_bytes", (json_int_t)tensor_bytes, "file_type",
                                 (json_int_t)ftype, "types", types, "seconds", secs));
    } else {
        char hb[32];
        core_human_bytes(hb, sizeof hb, size);
        printf("wrote %s: %zu tensors, %s (general.file_type %lld) in %.1f s\n", out,
               eng_gguf_n_tensors(g), hb, (long long)ftype, secs);
        for (int t = 0; t < 64; t++)
            if (counts[t])
                printf("  %-5s %zu tensor%s\n", eng_type_name(t), counts[t],
                       counts[t] == 1 ? "" : "s");
    }
    eng_gguf_free(g);
    return 0;
}

int cmd_convert(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, SPEC, 2);
    if (rc) return rc;
    const char *out = cli_opt(&a, "output");
    if (a.npos != 1 || !out || !*out) return core_err_set(MLV_EINVAL, "%s", USAGE_CONVERT);
    int outtype = ENG_OUT_AUTO;
    if (cli_opt(&a, "outtype") && (rc = parse_outtype(cli_opt(&a, "outtype"), &outtype))) return rc;
    const char *in = a.pos[0];
    struct stat st;
    if (stat(in, &st) != 0) return core_err_set(MLV_ENOTFOUND, "%s: no such file or folder", in);
    bool hf = S_ISDIR(st.st_mode);
    if (!hf && outtype == ENG_OUT_AUTO)
        return core_err_set(MLV_EINVAL,
                            "a GGUF input needs --outtype f32, f16, bf16 or q8_0 (auto keeps a "
                            "Hugging Face folder's own dtypes)");
    double t0 = core_now_s();
    rc = hf ? eng_convert_hf_dir(in, outtype, out) : eng_convert_gguf(in, outtype, out);
    if (rc) return rc;
    return summarise(&a, in, out, hf, core_now_s() - t0);
}
