/* The example repository's program: the build job compiles it, the tests run it. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int chunk = argc > 1 ? atoi(argv[1]) : 0;
    if (chunk < 1) {
        fprintf(stderr, "usage: hello CHUNK\n");
        return 2;
    }
    printf("hello from chunk %d\n", chunk);
    return 0;
}
