/* engine/openai.c: being written */
