from sight.cli import main

main()
