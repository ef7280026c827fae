/* registry/server.c: WORK IN PROGRESS (being written this session). */
