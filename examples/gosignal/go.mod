module gosignal

go 1.19
