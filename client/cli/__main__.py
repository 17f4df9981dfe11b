from cleanroom.client.cli import main

main()
