import sys

from musicgen_runtime.memory import reexec_with_hugepage_malloc

reexec_with_hugepage_malloc("bench")  # the in-process phases use the server's malloc setting

from .harness import main  # noqa: E402

sys.exit(main())
