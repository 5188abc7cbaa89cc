from converge.cli import main

raise SystemExit(main())
