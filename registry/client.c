/* registry/client.c: WORK IN PROGRESS (being written this session). */
