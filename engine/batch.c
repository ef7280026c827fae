/* engine/batch.c: being written */
