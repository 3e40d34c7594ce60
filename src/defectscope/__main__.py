from defectscope.cli import main

main()
