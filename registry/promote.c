/* registry/promote.c: WORK IN PROGRESS (being written this session). */
