/* WORK IN PROGRESS: written this session. */
int main(void) { return 0; }
