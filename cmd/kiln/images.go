package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func (c *cli) imageCmd() *cobra.Command {
	cmd := groupCmd(&cobra.Command{
		Use:   "image",
		Short: "Import, list and remove the agent's OCI images",
		Long: `image manages the OCI images the agent keeps, without a registry: an image
comes as an archive (docker save, or an OCI image layout as a tar) and
runs as a function with kiln deploy --image REF NAME. Its entrypoint must
speak kiln's executor protocol (docs/RUNTIMES.md, "Images").`,
	})
	cmd.AddCommand(c.imageImportCmd(), c.imageListCmd(), c.imageRmCmd())
	return cmd
}

func (c *cli) imageImportCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "import FILE",
		Short:   "Import the images of an archive (docker save, or an OCI image layout as a tar)",
		Example: "  docker save -o hello.tar example.com/hello:1 && kiln image import hello.tar",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			f, err := os.Open(a[0])
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			if !fi.Mode().IsRegular() {
				return usageError{fmt.Errorf("image import %s: not a regular file", a[0])}
			}
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			imgs, err := cl.ImportImage(cmd.Context(), f, fi.Size())
			if err != nil {
				return fmt.Errorf("image import %s: %w", a[0], c.agentError(cmd, err))
			}
			for _, img := range imgs {
				fmt.Fprintf(c.stdout, "Imported %s (%s, %s)\n", img.Name, img.Digest, fmtBytes(img.SizeBytes))
			}
			return nil
		},
	}
}

func (c *cli) imageListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the imported images",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			list, err := cl.Images(cmd.Context())
			if err != nil {
				return fmt.Errorf("image list: %w", c.agentError(cmd, err))
			}
			w := newTable(c.stdout)
			fmt.Fprintln(w, "NAME\tDIGEST\tSIZE\tIMPORTED")
			for _, img := range list {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", img.Name, img.Digest, fmtBytes(img.SizeBytes), fmtTimestamp(img.Created))
			}
			return w.Flush()
		},
	}
}

func (c *cli) imageRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm REF",
		Short: "Remove an image that no function runs",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			cl, err := c.client(cmd)
			if err != nil {
				return err
			}
			if err := cl.RemoveImage(cmd.Context(), a[0]); err != nil {
				return fmt.Errorf("image rm %s: %w", a[0], c.agentError(cmd, err))
			}
			fmt.Fprintf(c.stdout, "Removed %s\n", a[0])
			return nil
		},
	}
}
