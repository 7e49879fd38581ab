from geokit.cli import main

main()
